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
    /// Posted by `finish`: the watcher's pause ends at once, not up to 50 ms later (a
    /// wait every exit paid).
    private let wake = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

    /// Starts watching; `isDue` is asked every 50 ms from another thread.
    init(isDue: @escaping () -> Bool) {
        self.isDue = isDue
        sem_init(wake, 0, 0)
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

    deinit {
        sem_destroy(wake)
        wake.deallocate()
    }

    private func watch() {
        while !state.withLock({ $0.finished }) {
            if isDue() { pthread_kill(main, Self.signal) }
            var until = timespec()
            // sem_timedwait counts in CLOCK_REALTIME: a clock step only changes one pause.
            clock_gettime(CLOCK_REALTIME, &until)
            until.tv_nsec += 50_000_000
            if until.tv_nsec >= 1_000_000_000 {
                until.tv_sec += 1
                until.tv_nsec -= 1_000_000_000
            }
            _ = sem_timedwait(wake, &until)
        }
    }

    /// Stops the watching thread (before the summary, which must not be interrupted).
    func finish() {
        guard let thread = state.withLock({ state -> pthread_t? in
            state.finished = true
            defer { state.thread = nil }
            return state.thread
        }) else { return }
        sem_post(wake)
        pthread_join(thread, nil)
    }
}
