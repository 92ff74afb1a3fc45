import CUtapSys
import Glibc
import UtapCore
import UtapOutput

/// Stop requests from SIGINT/SIGTERM/SIGHUP land here (written by the C handler).
private let stopFlag = UnsafeMutablePointer<Int32>.allocate(capacity: 2)

/// Drives a live session: polls events into the writer until a stop condition, reports
/// loss as it appears, then detaches and writes the summary. Returns utap's exit status.
struct TraceRunner {
    let session: TraceSession
    let writer: EventWriter
    /// Also gets the summary (JSON mode: the human summary on stderr).
    let summaryWriter: EventWriter?
    let probeCount: Int
    let maxEvents: UInt64?
    let duration: Double?
    let command: LaunchedCommand?
    let tracedPid: Int32?

    private enum Stop: Error, Equatable {
        case signal(Int32)
        case maxEvents
        case duration
        case commandExited(Int32)
        case processExited
        case outputClosed
    }

    /// Thrown out of the delivery closure to end a poll early.
    private struct EnoughEvents: Error {}

    /// How long the reader sleeps between ring-buffer checks: the bound on delivery delay.
    static let pollIntervalMs: Int32 = 5
    /// How often loss counters are read from the kernel and a -p process is checked.
    static let lossCheckNs: UInt64 = 100_000_000

    func run() throws -> Int32 {
        stopFlag[0] = 0
        stopFlag[1] = 0
        utap_install_stop_handlers(stopFlag, stopFlag + 1)
        signal(SIGPIPE, SIG_IGN) // a closed pipe surfaces as EPIPE from write

        var counts = [UInt64](repeating: 0, count: probeCount)
        var lostReported = [UInt64](repeating: 0, count: probeCount)
        var total: UInt64 = 0
        let start = monotonicNow()
        let deadline = duration.map { start + UInt64($0 * 1e9) }
        var nextLossCheck = start + Self.lossCheckNs
        var stop: Stop?

        func deliver(_ event: Event) throws {
            try writer.write(event)
            counts[event.probe] += 1
            total += 1
            if let maxEvents, total >= maxEvents { throw EnoughEvents() }
        }

        func reportLoss() throws {
            for (probe, lost) in session.lostCounts().enumerated() where lost > lostReported[probe] {
                try writer.lost(probe: probe, count: lost - lostReported[probe])
                lostReported[probe] = lost
            }
        }

        func pump(timeoutMs: Int32) throws -> Stop? {
            do {
                _ = try session.poll(timeoutMs: timeoutMs, deliver: deliver)
                try writer.flush()
            } catch is EnoughEvents {
                return .maxEvents
            } catch OutputError.brokenPipe {
                return .outputClosed
            }
            return nil
        }

        do {
            while stop == nil {
                if stopFlag[0] != 0 {
                    stop = .signal(stopFlag[1])
                } else if let status = command?.pollExit() {
                    stop = .commandExited(status)
                } else if let deadline, monotonicNow() >= deadline {
                    stop = .duration
                } else {
                    stop = try pump(timeoutMs: Self.pollIntervalMs)
                }
                let now = monotonicNow()
                if now >= nextLossCheck, stop != .outputClosed {
                    try reportLoss()
                    nextLossCheck = now + Self.lossCheckNs
                    if stop == nil, let tracedPid, ProcessState.hasExited(tracedPid) {
                        stop = .processExited
                    }
                }
            }
            // What the target produced before the stop still belongs to the trace.
            switch stop! {
            case .signal, .commandExited, .processExited, .duration:
                if let late = try pump(timeoutMs: 0) { stop = late == .outputClosed ? late : stop }
            case .maxEvents, .outputClosed:
                break
            }
        } catch {
            session.detach()
            try? writer.flush()
            throw error
        }

        session.detach()
        if case .processExited = stop! {
            warn("pid \(tracedPid!) exited", prefix: false)
        }
        if stop! != .outputClosed {
            try reportLoss()
            let summary = TraceSummary(events: counts, lost: lostReported)
            do {
                try writer.summary(summary)
                try writer.flush()
            } catch OutputError.brokenPipe {}
            try summaryWriter?.summary(summary)
            try summaryWriter?.flush()
        }

        guard let command else { return 0 }
        switch stop! {
        case .commandExited(let status):
            return status
        case .signal(let signo):
            // Like perf: interrupting the trace ends the command it started.
            command.signal(signo)
            return command.waitForExit()
        default:
            return command.waitForExit()
        }
    }
}

