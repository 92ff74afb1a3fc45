import CUtapSys
import Glibc
import UtapCore

/// Interrupts the main thread's write(2) once a stop is due, so a reader that stopped
/// reading (a paused `| less`, a stuck pipeline) cannot hold utap past Ctrl-C, SIGTERM or
/// --duration, nor, with ptrace, its target at a stop. The output then gives up what it
/// could not write (`OutputBuffer.givesUpWhen`). Ctrl-C alone would not do: the kernel
/// may hand it to another of utap's threads, and --duration sends no signal at all.
final class OutputWatchdog {
    /// Ignored by default, so a late one harms nothing; its handler restarts no call.
    static let signal = SIGURG

    private let state = Locked((finished: false, thread: pthread_t?.none))
    private let main = pthread_self()
    private let isDue: () -> Bool

    /// Starts watching; `isDue` is asked every 50 ms from another thread.
    init(isDue: @escaping () -> Bool) {
        self.isDue = isDue
        utap_install_wake_handler(Self.signal)
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        guard pthread_create(&thread, nil, { raw in
            Unmanaged<OutputWatchdog>.fromOpaque(raw!).takeRetainedValue().watch()
            return nil
        }, box.toOpaque()) == 0 else {
            box.release()
            return  // without it, a stuck reader can still hold utap: not worth failing for
        }
        state.withLock { $0.thread = thread }
    }

    private func watch() {
        var pause = timespec(tv_sec: 0, tv_nsec: 50_000_000)
        while !state.withLock({ $0.finished }) {
            if isDue() { pthread_kill(main, Self.signal) }
            nanosleep(&pause, nil)
        }
    }

    /// Stops the watching thread (before the summary, which must not be interrupted).
    func finish() {
        guard let thread = state.withLock({ state -> pthread_t? in
            state.finished = true
            defer { state.thread = nil }
            return state.thread
        }) else { return }
        pthread_join(thread, nil)
    }
}
