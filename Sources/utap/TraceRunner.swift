import CUtapSys
import Glibc
import UtapCore
import UtapOutput

/// Stop requests from SIGINT/SIGTERM/SIGHUP land here (written by the C handler).
private let stopFlag = UnsafeMutablePointer<Int32>.allocate(capacity: 2)

/// Why a session ends.
enum StopReason: Error, Equatable {
    case signal(Int32)
    case maxEvents
    case duration
    case commandExited(Int32)
    case processExited
    case outputClosed
}

/// The stop conditions every subcommand shares: a signal, the command's exit, the traced
/// process's exit, the deadline (signal handlers: `installHandlers`, before attaching).
struct StopConditions {
    let session: TraceSession
    let command: LaunchedCommand?
    let tracedPid: Int32?
    let deadline: UInt64?
    /// For a COMMAND whose children are not followed: whether it started any.
    let children: ChildWatch?

    init(live: LiveSession, duration: Double?) {
        session = live.session
        command = live.command
        tracedPid = live.tracedPid
        deadline = duration.map { monotonicNow() + UInt64($0 * 1e9) }
        children = live.followsForks ? nil : live.command.map { ChildWatch(pid: $0.pid) }
    }

    /// Installed before anything is attached: a Ctrl-C during the attach must still end
    /// in a clean detach (utap killed by it would leave breakpoints in a ptrace target),
    /// so the request is kept and honoured as soon as the session runs.
    static func installHandlers() {
        stopFlag[0] = 0
        stopFlag[1] = 0
        utap_install_stop_handlers(stopFlag, stopFlag + 1)
        signal(SIGPIPE, SIG_IGN) // a closed pipe surfaces as EPIPE from write
    }

    /// Whether a stop was asked for (a signal) or the duration is over: what the output
    /// watchdog looks at, from its own thread.
    func isDue() -> Bool {
        stopFlag[0] != 0 || deadline.map { monotonicNow() >= $0 } ?? false
    }

    /// The reason to stop now, if any. Reading /proc for a -p process costs a little, so
    /// the caller says when that check is due.
    func check(processToo: Bool) -> StopReason? {
        if stopFlag[0] != 0 { return .signal(stopFlag[1]) }
        if session.reapsTracedProcess {
            // Waiting for the command here would take the tracer's ptrace stops.
            if let status = session.tracedExitStatus {
                guard let command else { return .processExited }
                command.recordExit(waitStatus: status)
                return .commandExited(command.pollExit()!)
            }
        } else if let status = command?.pollExit() {
            return .commandExited(status)
        }
        if processToo { children?.look() }
        if processToo, let tracedPid, ProcessState.hasExited(tracedPid) { return .processExited }
        if let deadline, monotonicNow() >= deadline { return .duration }
        return nil
    }

    /// Says, when the probes saw nothing, that the command started processes they do not
    /// see: a script that runs the program to trace is the usual reason for an empty trace.
    func hintUnfollowedChildren(eventsSeen: UInt64) {
        guard eventsSeen == 0, let children, children.sawChildren || session.startedProcesses else { return }
        warn("utap: hint: the command started child processes, which are not traced without --follow-forks",
             prefix: false)
    }

    /// utap's exit status once tracing stopped for `reason`: the command's status when
    /// there is one (interrupting the trace ends the command, like perf), else 0.
    func exitStatus(after reason: StopReason) -> Int32 {
        if case .processExited = reason, let tracedPid {
            warn("pid \(tracedPid) exited", prefix: false)
        }
        guard let command else { return 0 }
        if let status = session.tracedExitStatus { command.recordExit(waitStatus: status) }
        switch reason {
        case .commandExited(let status):
            return status
        case .signal(let signo):
            command.signal(signo)
            return command.waitForExit()
        default:
            return command.waitForExit()
        }
    }
}

/// Events delivered, per probe and in all. A class rather than variables captured by the
/// delivery closure (those were boxed and checked for exclusivity on every event); the
/// per-probe counts behind a pointer, so counting an event costs no uniqueness check.
private final class EventTally {
    private let slots: UnsafeMutableBufferPointer<UInt64>
    @exclusivity(unchecked) private(set) var total: UInt64 = 0

    init(probes: Int) {
        slots = .allocate(capacity: probes)
        slots.initialize(repeating: 0)
    }

    deinit { slots.deallocate() }

    var counts: [UInt64] { Array(slots) }

    @inline(__always)
    func count(_ probe: Int) {
        // An index no probe has (a stale breakpoint) is written but not counted.
        if probe >= 0, probe < slots.count { slots[probe] &+= 1 }
        total &+= 1
    }
}

/// Drives a streaming session: polls events into the writer until a stop condition,
/// reports loss as it appears, then detaches and writes the summary.
struct TraceRunner {
    let live: LiveSession
    let writer: EventWriter
    /// Also gets the summary (JSON mode: the human summary on stderr).
    let summaryWriter: EventWriter?
    let maxEvents: UInt64?
    let duration: Double?

    /// Thrown out of the delivery closure to end a poll early.
    private struct EnoughEvents: Error {}

    /// How long the reader sleeps between ring-buffer checks: the bound on delivery delay.
    static let pollIntervalMs: Int32 = 5
    /// After a stop, how long a write may wait on a reader that does not read before the
    /// rest of the output is given up.
    static let stalledNs: UInt64 = 500_000_000
    /// How often loss counters are read from the kernel and a -p process is checked.
    static let slowCheckNs: UInt64 = 100_000_000
    /// How long writing what was recorded before a stop may take, unless a command's run
    /// is being traced (UTAP_DRAIN_BUDGET_MS; a flood of a 32 MiB ring to a terminal
    /// would otherwise hold a Ctrl-C for seconds).
    static let drainBudgetNs = (getenv("UTAP_DRAIN_BUDGET_MS").flatMap { UInt64(String(cString: $0)) } ?? 1000) * 1_000_000

    func run() throws -> Int32 {
        let session = live.session
        let stops = StopConditions(live: live, duration: duration)
        let probeCount = live.probes.count
        let tally = EventTally(probes: probeCount)
        var lostReported = [UInt64](repeating: 0, count: probeCount)
        var nextSlowCheck = monotonicNow() + Self.slowCheckNs
        var stop: StopReason?
        // A reader that stops reading must not hold utap past a stop (OutputWatchdog).
        let output = live.output
        output.givesUpWhen = { [unowned output] in
            stops.isDue() && monotonicNow() &- output.lastProgressNs >= Self.stalledNs
        }
        let watchdog = OutputWatchdog(isDue: { stops.isDue() })
        defer { watchdog.finish() }
        var stalled = false

        func deliver(_ event: Event) throws {
            try writer.write(event)
            try counted(event.probe)
        }

        func deliverIntegers(_ event: IntegerEvent) throws {
            try writer.write(event)
            try counted(event.probe)
        }

        @inline(__always)
        func counted(_ probe: Int) throws {
            tally.count(probe)
            if let maxEvents, tally.total >= maxEvents { throw EnoughEvents() }
        }

        /// Records left unread at the end of a drain, per probe: lost like the kernel's.
        var unread = [UInt64](repeating: 0, count: probeCount)

        func reportLoss() throws {
            let lostCounts = zip(session.lostCounts(), unread).map { $0 + $1 }
            for (probe, lost) in lostCounts.enumerated() where lost > lostReported[probe] {
                try writer.lost(probe: probe, count: lost - lostReported[probe])
                lostReported[probe] = lost
            }
        }

        /// One poll into the writer: why to stop, if the output says so, and how many
        /// events it delivered.
        func pump(timeoutMs: Int32) throws -> (stop: StopReason?, delivered: Int) {
            do {
                let delivered = try session.poll(timeoutMs: timeoutMs, deliver: deliver, deliverIntegers: deliverIntegers)
                try writer.flush()
                return (nil, delivered)
            } catch is EnoughEvents {
                return (.maxEvents, 0)
            } catch OutputError.brokenPipe {
                return (.outputClosed, 0)
            } catch OutputError.stalled {
                stalled = true
                return (stops.check(processToo: false) ?? .outputClosed, 0)
            }
        }

        /// Everything the probes recorded before the stop. They are removed first: with a
        /// busy -p target still producing, draining would never end. What is left is
        /// finite, and a poll hands it over in passes of bounded size. Past `budgetNs`
        /// the rest is counted as lost, not written: a Ctrl-C ends a flood promptly.
        func drain(budgetNs: UInt64?) throws -> StopReason? {
            session.removeProbes()
            let deadline = budgetNs.map { monotonicNow() + $0 }
            while true {
                if let deadline, monotonicNow() >= deadline {
                    unread = session.discardPending()
                    let count = unread.reduce(0, +)
                    if count > 0 { warn("\(count) events recorded before the stop were not written (counted as lost)") }
                    return nil
                }
                let pass = try pump(timeoutMs: 0)
                if pass.stop != nil || pass.delivered == 0 { return pass.stop }
            }
        }

        do {
            while stop == nil {
                let now = monotonicNow()
                let slow = now >= nextSlowCheck
                stop = stops.check(processToo: slow)
                if stop == nil { stop = try pump(timeoutMs: Self.pollIntervalMs).stop }
                if slow, stop != .outputClosed {
                    try reportLoss()
                    nextSlowCheck = now + Self.slowCheckNs
                }
            }
            // What the target produced before the stop still belongs to the trace: all of
            // a command's run; when utap itself ends the trace, what it can write in
            // the drain budget.
            switch stop! {
            case .commandExited:
                if try drain(budgetNs: nil) == .outputClosed { stop = .outputClosed }
            case .signal, .processExited, .duration:
                if try drain(budgetNs: Self.drainBudgetNs) == .outputClosed { stop = .outputClosed }
            case .maxEvents, .outputClosed:
                break
            }
        } catch OutputError.writeFailed(let code) {
            // A full disk or a dead device: stop tracing, say how much is missing (the
            // buffer that failed, and every record still waiting behind it), let a
            // command finish on its own, and fail.
            session.removeProbes()
            let dropped = session.discardPending().reduce(0, +)
            session.detach()
            let missing = live.output.unwrittenBytes
            warn("utap: error: write output: \(String(cString: strerror(code))): \(missing) bytes of events could not be written, "
                 + "and \(dropped) more events recorded were dropped; probes detached", prefix: false)
            _ = stops.exitStatus(after: .maxEvents)
            return 1
        } catch {
            session.detach()
            try? writer.flush()
            throw error
        }

        // The last loss count is read while the maps still exist.
        if stop! != .outputClosed { try reportLoss() }
        session.detach()
        if stop! != .outputClosed {
            let summary = TraceSummary(events: tally.counts, lost: lostReported)
            do {
                try writer.summary(summary)
                try writer.flush()
            } catch OutputError.brokenPipe, OutputError.stalled {}
            if stalled {
                warn("utap: the output's reader stopped reading: \(output.unwrittenBytes) bytes of events were not written",
                     prefix: false)
            }
            try summaryWriter?.summary(summary)
            try summaryWriter?.flush()
            stops.hintUnfollowedChildren(eventsSeen: tally.total)
        }
        return stops.exitStatus(after: stop!)
    }
}

/// Whether a process started children: its main thread's children list in /proc, looked
/// at on each slow check (a child that lives less than that may go unseen). The backends
/// see every fork (`TraceSession.startedProcesses`); this covers a kernel without BTF,
/// where the bpf backend cannot watch them.
final class ChildWatch {
    let pid: Int32
    private(set) var sawChildren = false

    init(pid: Int32) {
        self.pid = pid
    }

    func look() {
        guard !sawChildren, let text = try? readTextFile("/proc/\(pid)/task/\(pid)/children") else { return }
        sawChildren = text.contains { $0.isNumber }
    }
}
