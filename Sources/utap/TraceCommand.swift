import ArgumentParser
import Glibc
import UtapBPF
import UtapCore
import UtapOutput

enum BackendChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, bpf, ptrace
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream every hit of the given probes.",
        usage: "utap trace [OPTIONS] PROBE... [-- COMMAND [ARG...]]",
        discussion: """
        PROBE is [TARGET:]LOCATION[%return] [FIELD...], one shell word each.
          TARGET    ELF path or library name (libc, libssl.so.3);
                    omitted: the COMMAND's executable
          LOCATION  SYMBOL, GLOB (str*), SYMBOL+OFFSET or 0xADDRESS
          FIELD     [NAME=]SOURCE[:TYPE]
          SOURCE    arg0..arg5, or ret on %return probes
          TYPE      s8 s16 s32 s64 (default) u8 u16 u32 u64 x ptr bool
                    str (64 bytes) str[N] (N up to 255)

        An entry probe on a function that starts with endbr64 goes just
        after it (same state, much cheaper); SYMBOL+0 probes the first byte.
        Without -p or COMMAND, every process that maps the file is traced.
        With COMMAND, utap exits with its status; Ctrl-C or SIGTERM ends the
        trace and is passed on to the command.

        Examples:
          utap trace 'libc:malloc size=arg0:u64' 'libc:malloc%return ret:x' -- ./app
          utap trace -p 4242 '/usr/sbin/nginx:ngx_http_process_request_line'
          utap trace --format json -o open.jsonl 'libc:open* path=arg0:str' -- ls
          utap trace --duration 5 'libc:write fd=arg0:s32 len=arg2:u64'
        """)


    @Option(name: .shortAndLong, help: "Trace only this process (all its threads).")
    var pid: Int32?

    @Option(help: "auto (bpf if usable, else ptrace), bpf or ptrace.")
    var backend: BackendChoice = .auto

    @Option(help: "text (aligned columns) or json (JSON Lines).")
    var format: OutputFormat = .text

    @Option(name: .shortAndLong, help: "Write events to FILE instead of stdout.")
    var output: String?

    @Option(help: "Stop after SECONDS.")
    var duration: Double?

    @Option(help: "Stop after N events.")
    var maxEvents: UInt64?

    @Option(help: "Ring buffer size in MiB (bpf), a power of two.")
    var bufferMb: Int = 32

    @Argument(help: "Probes, one per shell word.")
    var probes: [String] = []

    /// The words after `--`, split off before parsing (see main.swift): ArgumentParser
    /// cannot put a terminator-delimited list after a variadic positional.
    var command: [String] { CommandLineSplit.command }

    /// Option checks, run first thing in `run` (not ArgumentParser's `validate`, which
    /// would rewrap the error and drop its hint).
    func checkOptions() throws(UtapError) {
        if probes.isEmpty {
            throw .usage("trace: no PROBE given", hint: "e.g. utap trace 'libc:malloc size=arg0:u64' -- ./app")
        }
        if CommandLineSplit.hasTerminator && command.isEmpty {
            throw .usage("--: no command after it", hint: "give the program to start, e.g. -- ./app arg")
        }
        if pid != nil && !command.isEmpty {
            throw .usage("-p and -- COMMAND: cannot be used together", hint: "trace a running process or start one")
        }
        // A year at most: the deadline must fit in nanoseconds.
        if let duration, !(duration > 0 && duration <= 366 * 86400) {
            throw .usage("--duration \(duration): must be a number of seconds above 0, at most a year")
        }
        if maxEvents == 0 {
            throw .usage("--max-events 0: must be at least 1")
        }
        if bufferMb <= 0 || bufferMb & (bufferMb - 1) != 0 || bufferMb > 1024 {
            throw .usage("--buffer-mb \(bufferMb): must be a power of two from 1 to 1024")
        }
    }

    func run() throws {
        try checkOptions()
        let specs = try probes.map { (text: String) throws(UtapError) -> ProbeSpec in try ProbeParser.parse(text) }
        if let pid { try checkProcess(pid) }
        let chosen = try chooseBackend(backend)

        let launched = command.isEmpty ? nil : try LaunchedCommand(command)
        var resolver = ProbeResolver(pid: pid, executable: launched?.executable)
        let resolved: [ResolvedProbe]
        do {
            resolved = try specs.flatMap { (spec: ProbeSpec) throws(UtapError) -> [ResolvedProbe] in try resolver.resolve(spec) }
        } catch {
            launched?.abandon()
            throw error
        }
        resolver.warnings.forEach { warn($0) }

        let scope: TraceScope = launched.map { .process($0.pid) } ?? pid.map { .process($0) } ?? .allProcesses
        let plan = TracePlan(probes: resolved, scope: scope, bufferBytes: bufferMb << 20)
        let output = try openOutput(output)
        let descriptors = resolved.map(\.descriptor)
        // The text summary always reaches the user on stderr, whatever the stream's format.
        let stderrSummary = TextWriter(probes: descriptors, output: OutputBuffer(fd: STDERR_FILENO, ownsFD: false),
                                       startNs: monotonicNow())
        let writer: EventWriter = format == .json ? JSONWriter(probes: descriptors, output: output)
            : TextWriter(probes: descriptors, output: output, summaryOutput: OutputBuffer(fd: STDERR_FILENO, ownsFD: false),
                         startNs: monotonicNow())

        let session: TraceSession
        do {
            session = try chosen.attach(plan)
        } catch {
            launched?.abandon()
            throw error
        }
        let where_: String
        if let launched {
            where_ = "\(command[0]) (pid \(launched.pid))"
        } else if let pid {
            where_ = "pid \(pid)"
        } else {
            where_ = "all processes"
        }
        let count = resolved.count
        warn("Tracing \(count) probe\(count == 1 ? "" : "s") in \(where_) with \(chosen.name). Ctrl-C to stop.", prefix: false)

        let runner = TraceRunner(session: session, writer: writer,
                                 summaryWriter: format == .json ? stderrSummary : nil, probeCount: count,
                                 maxEvents: maxEvents, duration: duration, command: launched,
                                 tracedPid: pid)
        launched?.release()
        let status = try runner.run()
        throw ExitCode(status)
    }

    func chooseBackend(_ choice: BackendChoice) throws(UtapError) -> TracingBackend {
        switch choice {
        case .ptrace:
            throw .usage("--backend ptrace: the ptrace backend is not available in this build yet", hint: "use --backend bpf")
        case .bpf, .auto:
            let caps = Capabilities.current()
            if !caps.canUseBPF {
                throw .runtime("cannot use the bpf backend: utap lacks CAP_BPF and CAP_PERFMON",
                               hint: "run utap as root, e.g. 'sudo utap trace ...'")
            }
            return BPFBackend()
        }
    }

    func checkProcess(_ pid: Int32) throws(UtapError) {
        if pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH) {
            throw .usage("pid \(pid): no such process")
        }
    }

    func openOutput(_ path: String?) throws(UtapError) -> OutputBuffer {
        guard let path else { return OutputBuffer(fd: STDOUT_FILENO, ownsFD: false) }
        // O_NOFOLLOW: never write through a symlink planted where the file should be.
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw .runtime("cannot open output file '\(path)': \(String(cString: strerror(errno)))")
        }
        return OutputBuffer(fd: fd, ownsFD: true)
    }
}

func warn(_ message: String, prefix: Bool = true) {
    let line = (prefix ? "utap: warning: " : "") + message + "\n"
    _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}

func monotonicNow() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
