import ArgumentParser
import Glibc
import UtapCore
import UtapOutput

struct Count: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Count hits per probe in the kernel; print a table at the end.",
        usage: "utap count [OPTIONS] PROBE... [-- COMMAND [ARG...]]",
        discussion: """
        Nothing is sent to user space per hit: counters live in BPF maps and are read
        when a report is due (at exit, and every --interval seconds; each interval
        report holds that interval's hits). Probes take no fields here.

        Examples:
          utap count 'libc:malloc' 'libc:free' -- ./app
          utap count --by-pid --interval 1 'libc:write'
          utap count --format json -p 4242 'libssl.so.3:SSL_*'
        """)

    @OptionGroup var options: SessionOptions

    @Flag(help: "One row per probe and process.")
    var byPid = false

    @Option(parsing: .unconditional, help: "Also print a report every SECONDS (that interval's counts).")
    var interval: Double?

    func run() throws {
        try options.check("count")
        try options.checkSeconds(interval, "--interval")
        let live = try options.start(mode: .count(byPid: byPid), bufferBytes: 1 << 16, fieldsAllowed: false)
        let writer = AggregateWriter(probes: live.descriptors, json: options.format == .json, output: live.output)
        let returns = live.probes.contains { $0.kind == .return }
        let runner = AggregateRunner(live: live, interval: interval, duration: options.duration,
                                     lost: "hits could not be counted (" + (returns ? "a thread had 64 calls pending their "
                                         + "return, past which returns are not followed: deep recursion; or " : "")
                                         + "the per-process table was full)") { aggregates in
            try writer.writeCounts(aggregates, byPid: byPid, timestampNs: monotonicNow())
        }
        live.command?.release()
        throw ExitCode(try runner.run())
    }
}

struct Latency: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Histogram of entry-to-return latency per function, aggregated in the kernel.",
        usage: "utap latency [OPTIONS] PROBE... [-- COMMAND [ARG...]]",
        discussion: """
        Each PROBE names a function; its calls are timed from entry to return, per
        thread and safe under recursion, into log-linear buckets (4 per power of two).
        Reports show count, average, p50/p90/p99 (upper bounds: the top of the bucket
        holding them) and the exact maximum, with one histogram row per power of two.

        Examples:
          utap latency 'libc:malloc' -- ./app
          utap latency --interval 5 -p 4242 '/usr/sbin/nginx:ngx_http_process_request_line'
        """)

    @OptionGroup var options: SessionOptions

    @Option(parsing: .unconditional, help: "Also print a report every SECONDS (that interval's latencies).")
    var interval: Double?

    func run() throws {
        try options.check("latency")
        try options.checkSeconds(interval, "--interval")
        let live = try options.start(mode: .latency, bufferBytes: 1 << 16, fieldsAllowed: false)
        let writer = AggregateWriter(probes: live.descriptors, json: options.format == .json, output: live.output)
        let runner = AggregateRunner(live: live, interval: interval, duration: options.duration,
                                     lost: "calls could not be timed (a thread had 64 calls pending: deep recursion, "
                                         + "or calls left by longjmp)") { aggregates in
            try writer.writeLatency(aggregates, timestampNs: monotonicNow())
        }
        live.command?.release()
        throw ExitCode(try runner.run())
    }
}

/// Drives a count or latency session: sleeps until a report is due or a stop condition,
/// then reads the kernel's aggregates and hands the new part to `report`.
struct AggregateRunner {
    let live: LiveSession
    let interval: Double?
    let duration: Double?
    /// What the kernel's lost counts mean here, after their number.
    let lost: String
    let report: (Aggregates) throws -> Void

    static let tickNs: UInt64 = 50_000_000

    func run() throws -> Int32 {
        let stops = StopConditions(live: live, duration: duration)
        let session = live.session
        // The maps start empty at attach; reading a baseline here instead would lose the
        // hits a command made between its release and this line.
        var reported = Aggregates.empty(probes: live.probes.count)
        let step = interval.map { UInt64($0 * 1e9) }
        var nextReport = step.map { monotonicNow() + $0 }
        var stop: StopReason?

        func reportNew() throws {
            let now = session.aggregates()
            try report(now.since(reported))
            reported = now
        }

        do {
            while stop == nil {
                var pause = timespec(tv_sec: 0, tv_nsec: Int(Self.tickNs))
                nanosleep(&pause, nil) // a signal cuts it short
                stop = stops.check(processToo: true)
                // Nothing streams here, but a poll is where a session reports that it
                // failed (the ptrace tracer thread): without it a failure would look like
                // a trace that never ends.
                if stop == nil { _ = try session.poll(timeoutMs: 0, deliver: { _ in }) }
                if stop == nil, let due = nextReport, monotonicNow() >= due {
                    try reportNew()
                    nextReport = due + step!
                }
            }
            // The last numbers once no probe counts any more: read while they still did,
            // a function's entries and returns were read a moment apart.
            session.removeProbes()
            try reportNew()
        } catch OutputError.brokenPipe {
            stop = .outputClosed
        } catch {
            session.detach()
            throw error
        }
        let lost = session.lostCounts().reduce(0, +)
        session.detach()
        stops.hintUnfollowedChildren(eventsSeen: reported.counts.reduce(0, +) + reported.histograms.reduce(0) { $0 + $1.count })
        if lost > 0 {
            warn("\(lost) \(self.lost)")
        }
        return stops.exitStatus(after: stop!)
    }
}
