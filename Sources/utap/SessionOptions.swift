import ArgumentParser
import Glibc
import UtapBPF
import UtapCore
import UtapOutput
import UtapPtrace

enum BackendChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, bpf, ptrace
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

extension ReturnMode: ExpressibleByArgument {}

/// The options trace, count and latency share: what to probe, where, and where to write.
struct SessionOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Trace only this process (all its threads).")
    var pid: Int32?

    @Option(help: "auto (bpf if usable, else ptrace), bpf or ptrace.")
    var backend: BackendChoice = .auto

    @Option(help: "text or json (JSON Lines).")
    var format: OutputFormat = .text

    @Option(name: .shortAndLong, help: "Write to FILE instead of stdout.")
    var output: String?

    @Option(parsing: .unconditional, help: "Stop after SECONDS.")
    var duration: Double?

    @Option(help: "How return probes see returns: hijack (uretprobe), sites (a probe on each ret; C++ exceptions pass), or auto (sites for C++, Rust and Go).")
    var returnMode: ReturnMode = .auto

    @Option(help: "Record only hits where EXPR holds, decided in the kernel: comparisons of argN[:TYPE], ret, pid, tid, comm, latency with && || ! ( ).")
    var filter: String?

    @Flag(help: "Also trace the processes the traced one forks (and theirs). Probes then fire in every process that maps the file and are filtered in the kernel.")
    var followForks = false

    @Option(parsing: .unconditional, help: "Refuse globs that expand to more probes than this.")
    var maxProbes: Int = 1000

    @Argument(help: "Probes, one per shell word.")
    var probes: [String] = []

    /// The words after `--`, split off before parsing (see main.swift): ArgumentParser
    /// cannot put a terminator-delimited list after a variadic positional.
    var command: [String] { CommandLineSplit.command }

    /// Option checks, run first thing in `run` (not ArgumentParser's `validate`, which
    /// would rewrap the error and drop its hint).
    func check(_ subcommand: String) throws(UtapError) {
        if probes.isEmpty {
            throw .usage("\(subcommand): no PROBE given", hint: "e.g. utap \(subcommand) 'libc:malloc' -- ./app")
        }
        if CommandLineSplit.hasTerminator && command.isEmpty {
            throw .usage("--: no command after it", hint: "give the program to start, e.g. -- ./app arg")
        }
        if pid != nil && !command.isEmpty {
            throw .usage("-p and -- COMMAND: cannot be used together", hint: "trace a running process or start one")
        }
        try checkSeconds(duration, "--duration")
        if followForks && pid == nil && command.isEmpty {
            throw .usage("--follow-forks: needs -p PID or -- COMMAND", hint: "without them every process is traced already")
        }
    }

    /// The process `-p` names. A thread id (what `top -H` and `htop` show) stands for its
    /// process, with a warning: probes see every thread of a process.
    static func process(of given: Int32) throws(UtapError) -> Int32 {
        if given <= 0 || (kill(given, 0) != 0 && errno == ESRCH) {
            throw .usage("pid \(given): no such process")
        }
        if kill(given, 0) != 0 && errno == EPERM {
            throw .runtime("pid \(given): not permitted to trace it (another user's process)",
                           hint: "run utap as root, e.g. 'sudo utap trace -p \(given) ...'")
        }
        if ProcessState.hasExited(given) {
            throw .usage("pid \(given): has exited (a zombie its parent has not reaped)")
        }
        if ProcessState.isKernelThread(given) {
            throw .usage("pid \(given): is a kernel thread, which runs no user-space code to probe")
        }
        guard let tgid = ProcessState.statusNumber("Tgid", pid: given), tgid > 0, tgid != given else { return given }
        warn("\(given) is a thread of process \(tgid): tracing the process, all its threads")
        return tgid
    }

    /// A year at most: deadlines must fit in nanoseconds.
    func checkSeconds(_ value: Double?, _ option: String) throws(UtapError) {
        if let value, !(value > 0 && value <= 366 * 86400) {
            throw .usage("\(option) \(value): must be a number of seconds above 0, at most a year")
        }
    }

    /// Parses and resolves the probes, starts the COMMAND held before exec, attaches, and
    /// prints the status line. The caller releases the command once it is ready to read.
    func start(mode: TraceMode, userStacks: Bool = false, bufferBytes: Int, fieldsAllowed: Bool = true) throws(UtapError) -> LiveSession {
        let specs = try probes.map { (text: String) throws(UtapError) -> ProbeSpec in try ProbeParser.parse(text) }
        if !fieldsAllowed, let spec = specs.first(where: { !$0.fields.isEmpty }) {
            throw .usage("probe '\(spec.name)': fields are not recorded here", hint: "use utap trace to see argument values")
        }
        let pid = try self.pid.map { (given) throws(UtapError) -> Int32 in try Self.process(of: given) }
        let program = try filter.map { (text: String) throws(UtapError) -> [FilterInstruction] in try FilterCompiler.compile(text) } ?? []
        if FilterCompiler.needsReturn(program), mode != .latency, let entry = specs.first(where: { $0.kind == .entry }) {
            throw .usage("--filter: ret and latency exist only on return probes, and '\(entry.name)' is an entry probe",
                         hint: "filter entry probes on arguments, pid, tid or comm")
        }
        // The same rule as for fields: at a return the argument registers hold anything.
        if FilterCompiler.readsArguments(program), let exit = specs.first(where: { $0.kind == .return || mode == .latency }) {
            throw .usage("--filter: arguments are not known at a return (their registers are overwritten by then), and '\(exit.name)' "
                         + (mode == .latency ? "is timed at its return" : "is a return probe"),
                         hint: "filter return probes on ret, latency, pid, tid or comm")
        }
        StopConditions.installHandlers()
        if backend == .bpf && !Capabilities.current().canUseBPF {
            throw .runtime("cannot use the bpf backend: utap lacks CAP_BPF and CAP_PERFMON",
                           hint: "run utap as root, e.g. 'sudo utap trace ...', or use --backend ptrace")
        }
        let launched = command.isEmpty ? nil : try LaunchedCommand(command)
        do throws(UtapError) {
            var resolver = ProbeResolver(pid: pid, executable: launched?.executable)
            var resolved: [ResolvedProbe] = []
            for spec in specs {
                var probes = try resolver.resolve(spec)
                // A latency is measured at the return: --return-mode applies.
                if mode == .latency { for i in probes.indices { probes[i].kind = .return } }
                resolved += try resolver.placeReturns(probes, of: spec, mode: returnMode)
            }
            // The filter program reads the System V argument registers for every probe.
            if FilterCompiler.readsArguments(program), let go = resolved.first(where: \.takesGoArguments) {
                throw UtapError.usage("--filter: argN there means the C argument registers, and '\(go.name)' is a Go function "
                                      + "(Go passes arguments in rax, rbx, rcx, ...)",
                                      hint: "record the argument as a field (arg0 of a Go function is its first), or filter on pid, tid or comm")
            }
            if resolved.count > maxProbes {
                throw UtapError.usage("probes: \(resolved.count) functions match, more than --max-probes \(maxProbes)",
                                      hint: "narrow the glob, or raise --max-probes")
            }
            resolver.warnings.forEach { warn($0) }
            let scope: TraceScope = launched.map { .process($0.pid) } ?? pid.map { .process($0) } ?? .allProcesses
            let output = try openOutput()
            var plan = TracePlan(probes: resolved, scope: scope, mode: mode, userStacks: userStacks,
                                 filter: program, followForks: followForks, bufferBytes: bufferBytes)
            plan.startsAtExec = launched != nil
            plan.program = launched?.executable ?? pid.flatMap { realPath("/proc/\($0)/exe") }
            let (session, backendName) = try attach(plan)
            // Least privilege from here on (the ptrace tracer thread drops its own).
            try Capabilities.keepOnly(Capabilities.keptAfterAttach)
            let place = launched.map { "\(command[0]) (pid \($0.pid))" } ?? pid.map { "pid \($0)" } ?? "all processes"
            let n = resolved.count
            warn("Tracing \(n) probe\(n == 1 ? "" : "s") in \(place) with \(backendName). Ctrl-C to stop.", prefix: false)
            return LiveSession(session: session, probes: resolved, output: output, command: launched, tracedPid: pid,
                               followsForks: followForks)
        } catch {
            launched?.abandon()
            throw error
        }
    }

    /// Attaches with the chosen backend. `auto` takes bpf when it can load and attach,
    /// else ptrace for a single process, saying why in one line on stderr. A process that
    /// exits meanwhile is named as the reason (its files vanish from /proc/PID/root, and
    /// the backends would report a missing file).
    func attach(_ plan: TracePlan) throws(UtapError) -> (TraceSession, String) {
        do throws(UtapError) {
            return try attachWithBackend(plan)
        } catch {
            try checkStillRunning(plan)
            throw error
        }
    }

    private func checkStillRunning(_ plan: TracePlan) throws(UtapError) {
        if case .process(let pid) = plan.scope, ProcessState.hasExited(pid) {
            throw .runtime("pid \(pid) exited before its probes were attached")
        }
    }

    private func attachWithBackend(_ plan: TracePlan) throws(UtapError) -> (TraceSession, String) {
        switch backend {
        case .ptrace:
            return (try PtraceBackend().attach(plan), "ptrace")
        case .bpf:
            return (try BPFBackend().attach(plan), "bpf")
        case .auto:
            let reason: String
            let privileged = Capabilities.current().canUseBPF
            if privileged {
                do throws(UtapError) {
                    return (try BPFBackend().attach(plan), "bpf")
                } catch where error.code == .runtime {
                    reason = error.message
                }
            } else {
                reason = "utap lacks CAP_BPF and CAP_PERFMON"
            }
            try checkStillRunning(plan)
            guard case .process = plan.scope else {
                throw .runtime("cannot use the bpf backend: \(reason)",
                               hint: (privileged ? "" : "run utap as root, or ")
                                   + "give -p PID or -- COMMAND so ptrace can be used instead")
            }
            warn("utap: bpf backend unavailable (\(reason)); using ptrace", prefix: false)
            return (try PtraceBackend().attach(plan), "ptrace")
        }
    }

    func openOutput() throws(UtapError) -> OutputBuffer {
        guard let output else { return OutputBuffer(fd: STDOUT_FILENO, ownsFD: false) }
        // O_NOFOLLOW: never write through a symlink planted where the file should be. The
        // system's own links (/dev/stdout, /proc/self/fd/N) are followed.
        let systemLink = output.hasPrefix("/dev/") || output.hasPrefix("/proc/")
        let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (systemLink ? 0 : O_NOFOLLOW), 0o644)
        guard fd >= 0 else {
            if errno == ELOOP && !systemLink {
                throw .runtime("cannot open output file '\(output)': it is a symbolic link, which utap does not write through",
                               hint: "give the path it points to")
            }
            throw .runtime("cannot open output file '\(output)': \(String(cString: strerror(errno)))")
        }
        return OutputBuffer(fd: fd, ownsFD: true)
    }
}

/// Attached probes and what goes with them, ready to run.
struct LiveSession {
    let session: TraceSession
    let probes: [ResolvedProbe]
    let output: OutputBuffer
    let command: LaunchedCommand?
    let tracedPid: Int32?
    /// --follow-forks: the command's (or process's) children are traced too.
    let followsForks: Bool

    var descriptors: [ProbeDescriptor] { probes.map(\.descriptor) }
}

func warn(_ message: String, prefix: Bool = true) {
    let line = (prefix ? "utap: warning: " : "") + message + "\n"
    _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}

