import CUtapSys
import Glibc
import UtapCore

/// The ptrace backend: probes as int3 breakpoints handled by `PtraceEngine` on a tracer
/// thread of its own. For machines where BPF is missing or refused; traces one process
/// (and, with --follow-forks, its children).
public struct PtraceBackend: TracingBackend {
    public let name = "ptrace"

    public init() {}

    /// The device through which the tracer keeps idle CPUs awake while hits come back to
    /// back (`WakeLatencyRequest`), for `utap doctor`.
    public static let wakeLatencyDevice = WakeLatencyRequest.device

    public func attach(_ plan: TracePlan) throws(UtapError) -> TraceSession {
        guard case .process(let pid) = plan.scope else {
            throw .usage("the ptrace backend traces one process, not every process that maps the file",
                         hint: "give -p PID or -- COMMAND")
        }
        let placer = try ProbePlacer(probes: plan.probes)
        try placer.check()
        let session = PtraceSession(plan: plan, pid: pid, placer: placer)
        try session.start()
        return session
    }
}

/// Live ptrace probes. The tracer thread owns the engine (ptrace requests are accepted only
/// from the thread that attached); events reach `poll` through a bounded queue, so a slow
/// reader holds the target back instead of losing events.
final class PtraceSession: TraceSession, @unchecked Sendable {
    private let plan: TracePlan
    private let pid: Int32
    private let placer: ProbePlacer
    private let shared = Locked(Shared())
    /// Events waiting for `poll` beyond this make the tracer wait.
    static let queueLimit = 65536
    /// The signal that interrupts the tracer thread's waitpid.
    static let wakeSignal = SIGUSR2

    struct Shared {
        var events: [Event] = []
        var lost: [UInt64] = []
        var aggregates: Aggregates
        var attached: Result<Void, UtapError>?
        var stopRequested = false
        var finished = false
        var tracerThread: pthread_t?
        /// The traced process's wait status, when it ended while traced.
        var exitStatus: Int32?
        /// A traced process started another (see `startedProcesses`).
        var startedProcesses = false
        var failure: UtapError?
        init(probes: Int) { aggregates = .empty(probes: probes) }
        init() { aggregates = .empty(probes: 0) }
    }

    init(plan: TracePlan, pid: Int32, placer: ProbePlacer) {
        self.plan = plan
        self.pid = pid
        self.placer = placer
        shared.withLock {
            $0.aggregates = .empty(probes: plan.probes.count)
            $0.lost = [UInt64](repeating: 0, count: plan.probes.count)
        }
    }

    deinit { detach() }

    /// Starts the tracer thread and waits until the probes are in place (or failed).
    func start() throws(UtapError) {
        utap_install_wake_handler(Self.wakeSignal)
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&thread, nil, { raw in
            let session = Unmanaged<PtraceSession>.fromOpaque(raw!).takeRetainedValue()
            session.tracerMain()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw .runtime("cannot start the tracer thread: \(String(cString: strerror(rc)))")
        }
        shared.withLock { $0.tracerThread = thread }
        while true {
            if let result = shared.withLock({ $0.attached }) {
                if case .failure(let error) = result {
                    pthread_join(thread, nil)
                    shared.withLock { $0.tracerThread = nil }
                    throw error
                }
                return
            }
            usleep(500)
        }
    }

    // MARK: TraceSession

    /// Events are built as they are taken at each stop: every one goes to `deliver`.
    func poll(timeoutMs: Int32, deliver: (Event) throws -> Void,
              deliverIntegers: (IntegerEvent) throws -> Void) throws -> Int {
        var batch = take()
        if batch.isEmpty && timeoutMs > 0 {
            usleep(UInt32(timeoutMs) * 1000)
            batch = take()
        }
        for (i, event) in batch.enumerated() {
            do {
                try deliver(event)
            } catch {
                // Keep what was not delivered, in order.
                let rest = batch[(i + 1)...]
                shared.withLock { $0.events.insert(contentsOf: rest, at: 0) }
                throw error
            }
        }
        if let failure = shared.withLock({ $0.failure }) { throw failure }
        return batch.count
    }

    func discardPending() -> [UInt64] {
        var counts = [UInt64](repeating: 0, count: plan.probes.count)
        for event in take() where counts.indices.contains(event.probe) { counts[event.probe] += 1 }
        return counts
    }

    private func take() -> [Event] {
        shared.withLock { state in
            let events = state.events
            state.events = []
            return events
        }
    }

    /// Returns lost to a full return stack (64 pending calls per thread, as uretprobes).
    func lostCounts() -> [UInt64] { shared.withLock { $0.lost } }

    func aggregates() -> Aggregates { shared.withLock { $0.aggregates } }

    /// The wait status of the traced process when it ended while traced (the tracer reaped
    /// it: nobody else can).
    var tracedExitStatus: Int32? { shared.withLock { $0.exitStatus } }
    var startedProcesses: Bool { shared.withLock { $0.startedProcesses } }
    var reapsTracedProcess: Bool { true }

    /// Detaching is all there is to it: the queue stays readable afterwards.
    func removeProbes() {
        detach()
    }

    func detach() {
        guard let thread = shared.withLock({ state -> pthread_t? in
            state.stopRequested = true
            let thread = state.tracerThread
            state.tracerThread = nil
            return thread
        }) else { return }
        // The tracer may be about to block in waitpid: signal it until it has finished.
        while !shared.withLock({ $0.finished }) {
            pthread_kill(thread, Self.wakeSignal)
            usleep(1000)
        }
        pthread_join(thread, nil)
    }

    // MARK: tracer thread

    private func tracerMain() {
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, Self.wakeSignal)
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
        var engine: PtraceEngine?
        do throws(UtapError) {
            let process = try TracedProcess(pid: pid, killOnExit: plan.startsAtExec)
            let live = PtraceEngine(process: process, followForks: plan.followForks)
            engine = live
            let events = EventMaker(plan: plan)
            // The engine keeps these closures: unowned references, no cycle.
            live.onHit = { [unowned self] hit in self.record(hit, events) }
            live.onLost = { [unowned self] probe in shared.withLock { $0.lost[probe] += 1 } }
            live.onProcessStarted = { [unowned self] in shared.withLock { $0.startedProcesses = true } }
            // An untimed call is lost only where its latency is what is recorded (as bpf).
            if plan.mode == .latency { live.onUntimed = live.onLost }
            live.onMappingsChanged = { [placer, unowned live] space in
                events.forget(pid: space.pid)
                try? placer.place(in: space, engine: live)
            }
            let warn = { (message: String) in
                let line = "utap: warning: \(message)\n"
                _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
            }
            placer.warn = warn
            live.onUnmatchedReturn = { tid in
                warn("thread \(tid) returned into the return-probe trampoline with no call pending there: it gets SIGILL")
            }
            if !plan.startsAtExec { try placer.place(in: process, engine: live, strict: true) }
            // Capabilities are per thread: this one keeps only what tracing on needs.
            try Capabilities.keepOnly(Capabilities.keptAfterAttach)
            shared.withLock { $0.attached = .success(()) }
            let outcome = try live.run(until: { [unowned self] in shared.withLock { $0.stopRequested } })
            if outcome == .stopped { live.detach() }
            shared.withLock { $0.exitStatus = live.rootExitStatus }
        } catch {
            engine?.detach()
            shared.withLock { state in
                if state.attached == nil { state.attached = .failure(error) } else { state.failure = error }
            }
        }
        shared.withLock { $0.finished = true }
    }

    /// One probe event: filtered, then counted or queued.
    private func record(_ hit: Hit, _ maker: EventMaker) {
        let probe = plan.probes[hit.probe]
        let comm = maker.comm(pid: hit.pid, tid: hit.tid)
        if !plan.filter.isEmpty {
            let sources = Registers.argumentRegisters.map { hit.registers[$0] } + [hit.registers[.rax]]
            guard FilterEvaluator.passes(plan.filter, sources: sources, pid: hit.pid, tid: hit.tid, comm: comm,
                                         latency: hit.latencyNs) else { return }
        }
        switch plan.mode {
        case .count(let byPid):
            shared.withLock { state in
                state.aggregates.counts[hit.probe] += 1
                if byPid {
                    if let i = state.aggregates.processCounts.firstIndex(where: { $0.probe == hit.probe && $0.pid == hit.pid }) {
                        state.aggregates.processCounts[i].count += 1
                    } else {
                        state.aggregates.processCounts.append(ProcessCount(probe: hit.probe, pid: hit.pid, comm: comm, count: 1))
                    }
                }
            }
        case .latency:
            if let latency = hit.latencyNs { shared.withLock { $0.aggregates.histograms[hit.probe].record(latency) } }
        case .stream:
            let event = maker.event(hit, probe: probe, comm: comm, userStack: plan.userStacks)
            while !shared.withLock({ state -> Bool in
                guard state.events.count < Self.queueLimit || state.stopRequested else { return false }
                state.events.append(event)
                return true
            }) {
                usleep(200)  // the reader is behind: the target waits at its probe
            }
        }
    }
}

/// Builds `Event`s from hits: fields from registers and memory, comm, stack.
final class EventMaker {
    private let memory = ProcessMemory()
    /// Each thread's /proc comm file, kept open, and the name last read from it.
    private var commFiles: [Int32: (fd: Int32, name: ThreadName, text: String)] = [:]
    /// Threads whose comm file stays open; past this many, all are closed and reopened.
    static let maxCommFiles = 512
    private let symbolizer: Symbolizer?
    /// Deepest user stack walked: the BPF side's UTAP_STACK_MAX.
    static let maxFrames = 64
    /// Per probe: whether its site is a function's first instruction, `push %rbp` or
    /// endbr64 (see `stack`).
    private var opensFrame: [Int: Bool] = [:]

    init(plan: TracePlan) {
        symbolizer = plan.userStacks ? Symbolizer(knownFiles: Array(Set(plan.probes.map(\.path))).sorted()) : nil
    }

    deinit { closeCommFiles() }

    /// The thread's name at this hit, as the bpf backend reports it: a thread may rename
    /// itself at any time (prctl, pthread_setname_np). Read from its comm file, which
    /// stays open: a pread, where opening it each time took three system calls.
    func comm(pid: Int32, tid: Int32) -> String {
        if let file = commFiles[tid] {
            if let name = Self.readName(file.fd) {
                if name == file.name { return file.text }
                commFiles[tid] = (file.fd, name, name.string)
                return name.string
            }
            // The thread is gone (its tid may come back as another thread's).
            close(file.fd)
            commFiles[tid] = nil
        }
        if commFiles.count >= Self.maxCommFiles { closeCommFiles() }
        let fd = open("/proc/\(pid)/task/\(tid)/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        let name = Self.readName(fd) ?? ThreadName(low: 0, high: 0)
        commFiles[tid] = (fd, name, name.string)
        return name.string
    }

    /// The name in a comm file (TASK_COMM_LEN bytes at most, then a newline), read in
    /// place; nil when it cannot be read.
    private static func readName(_ fd: Int32) -> ThreadName? {
        var bytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &bytes) { buffer -> ThreadName? in
            let count = pread(fd, buffer.baseAddress, 17, 0)
            guard count > 0 else { return nil }
            if buffer[count - 1] == 0x0A { buffer[count - 1] = 0 }
            return ThreadName(bytes: buffer.baseAddress!)
        }
    }

    private func closeCommFiles() {
        for file in commFiles.values { close(file.fd) }
        commFiles = [:]
    }

    /// A process exec'd: its names and its memory are new.
    func forget(pid: Int32) {
        closeCommFiles()
        memory.forget(pid: pid)
    }

    func event(_ hit: Hit, probe: ResolvedProbe, comm: String, userStack: Bool) -> Event {
        let regs = hit.registers
        let fields = probe.fields.map { field -> FieldValue in
            let raw: UInt64
            switch field.source {
            case .arg(let n): raw = n < 6 ? regs[Registers.argumentRegisters[n]] : 0
            case .ret: raw = regs[.rax]
            case .location(.register(let r)): raw = regs[r]
            case .location(.constant(let c)): raw = UInt64(bitPattern: c)
            case .location(.memory(let base, let displacement, let size)):
                raw = memory.integer(pid: hit.pid, address: regs[base] &+ UInt64(bitPattern: displacement), size: size) ?? 0
            }
            guard case .string(let maxLength) = field.type else { return .integer(raw, as: field.type) }
            guard let string = memory.string(pid: hit.pid, address: raw, maxLength: maxLength) else {
                return .unreadable(address: raw)
            }
            return .string(string.bytes, truncated: string.truncated)
        }
        return Event(timestampNs: hit.timestampNs, pid: hit.pid, tid: hit.tid, comm: comm, probe: hit.probe,
                     kind: hit.kind, fields: fields, latencyNs: hit.latencyNs,
                     stack: userStack ? stack(hit, probe: probe) : nil)
    }

    /// The user stack by frame pointers, as the kernel walks it for BPF: the probe's
    /// address, then each saved return address up the rbp chain. At a function's entry
    /// (the site is `push %rbp` or endbr64, as the kernel checks) rbp is still the
    /// caller's frame, so the return address at the top of the stack comes first, or the
    /// immediate caller would be missing.
    private func stack(_ hit: Hit, probe: ResolvedProbe) -> [String] {
        var addresses = [hit.kind == .return ? hit.registers[.rip] : hit.address]
        if hit.kind == .entry, opensFrame(probe, index: hit.probe),
           let caller = memory.integer(pid: hit.pid, address: hit.registers[.rsp], size: 8) {
            addresses.append(caller)
        }
        var frame = hit.registers[.rbp]
        while addresses.count < Self.maxFrames, frame != 0, frame & 7 == 0,
              let next = memory.integer(pid: hit.pid, address: frame, size: 8),
              let returnAddress = memory.integer(pid: hit.pid, address: frame &+ 8, size: 8), returnAddress != 0 {
            addresses.append(returnAddress)
            guard next > frame else { break }
            frame = next
        }
        return symbolizer?.frames(pid: hit.pid, addresses: addresses, buildIDFrames: []) ?? []
    }

    private func opensFrame(_ probe: ResolvedProbe, index: Int) -> Bool {
        if let known = opensFrame[index] { return known }
        let code = (try? InstructionDecoder.code(atFileOffset: probe.fileOffset, in: probe.path)) ?? []
        let answer = code.first == 0x55 || InstructionDecoder.startsWithEndbr64(code)
        opensFrame[index] = answer
        return answer
    }
}

extension String {
    /// Without the newline /proc files end with.
    func trimmingTrailingNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}
