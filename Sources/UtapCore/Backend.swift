/// A probe resolved against a file: where exactly it goes and what it records. Plain
/// values; backends turn these into live attachments.
public struct ResolvedProbe: Equatable, Sendable {
    /// Display name: the probe text without fields, or TARGET:SYMBOL for a glob's match.
    public var name: String
    public var kind: ProbeKind
    public var fields: [FieldSpec]
    /// The ELF file to attach to, as the tracer can open it (may be under /proc/PID/root).
    public var path: String
    /// The function containing the site, for messages.
    public var function: String?
    /// ELF virtual address of the probe site.
    public var address: UInt64
    /// Offset of the probe site in the file: what the kernel's uprobe API takes.
    public var fileOffset: UInt64
    /// A USDT semaphore's file offset: the kernel counts attached probes there, so code
    /// guarded by it runs only while traced.
    public var semaphoreOffset: UInt64?
    /// File offsets of the function's `ret` instructions, when its return probe goes on
    /// them instead of hijacking the return address (`--return-mode sites`).
    public var returnSites: [UInt64] = []
    /// A function of a Go program: its `argN` fields read Go's argument registers
    /// (`ProbeResolver.goArgumentRegisters`), not the System V ones.
    public var takesGoArguments = false

    public init(name: String, kind: ProbeKind, fields: [FieldSpec], path: String, function: String?,
                address: UInt64, fileOffset: UInt64, semaphoreOffset: UInt64? = nil) {
        self.name = name
        self.kind = kind
        self.fields = fields
        self.path = path
        self.function = function
        self.address = address
        self.fileOffset = fileOffset
        self.semaphoreOffset = semaphoreOffset
    }

    public var descriptor: ProbeDescriptor {
        ProbeDescriptor(name: name, kind: kind, fieldNames: fields.map(\.name))
    }
}

/// Whom to trace.
public enum TraceScope: Equatable, Sendable {
    /// Every process that maps the probed files (bpf only).
    case allProcesses
    /// One process and all its threads.
    case process(Int32)
}

/// Everything a backend needs to attach.
public struct TracePlan: Equatable, Sendable {
    public var probes: [ResolvedProbe]
    public var scope: TraceScope
    public var mode: TraceMode
    /// Streamed events carry the user stack, symbolized (`--stack`).
    public var userStacks: Bool
    /// `--filter`, compiled; empty lets every hit through.
    public var filter: [FilterInstruction]
    /// `--follow-forks`: processes the traced one forks are traced too (needs a process scope).
    public var followForks: Bool
    /// Ring buffer bytes (bpf); a power of two.
    public var bufferBytes: Int
    /// The process of `scope` is utap's `-- COMMAND`, held before exec: its probes go into
    /// the image it is about to exec (the ptrace backend places them at the exec stop).
    public var startsAtExec = false
    /// The traced program's file (the COMMAND's, or the -p process's at start): with the
    /// probed files, where a string a process left unread when it exited is looked for.
    public var program: String?

    public init(probes: [ResolvedProbe], scope: TraceScope, mode: TraceMode = .stream,
                userStacks: Bool = false, filter: [FilterInstruction] = [], followForks: Bool = false,
                bufferBytes: Int = 32 << 20) {
        self.probes = probes
        self.scope = scope
        self.mode = mode
        self.userStacks = userStacks
        self.filter = filter
        self.followForks = followForks
        self.bufferBytes = bufferBytes
    }
}

/// Live probes. Releasing the session (or calling `detach`) removes every probe.
public protocol TraceSession: AnyObject {
    /// Waits at most `timeoutMs` for events, hands each to `deliver` (or, where the backend
    /// can, an event of integer fields to `deliverIntegers`, seen in place), and returns how
    /// many were delivered. Stops early (without losing the rest) when a delivery throws.
    func poll(timeoutMs: Int32, deliver: (Event) throws -> Void,
              deliverIntegers: (IntegerEvent) throws -> Void) throws -> Int
    /// Records lost so far, per probe of the plan (cumulative); zeros once detached.
    func lostCounts() -> [UInt64]
    /// What count and latency sessions have aggregated so far (cumulative).
    func aggregates() -> Aggregates
    /// Stops new events: removes every probe, while what was recorded before stays
    /// readable through `poll` and `lostCounts` until `detach`. Idempotent.
    func removeProbes()
    /// After `removeProbes`: takes every record still pending without delivering it, and
    /// returns how many there were per probe of the plan.
    func discardPending() -> [UInt64]
    /// Removes every probe and frees what the session holds. Idempotent.
    func detach()
    /// The traced process is reaped by the backend (ptrace): nobody else may wait for it
    /// while the session is attached.
    var reapsTracedProcess: Bool { get }
    /// Its wait status, once it ended while traced.
    var tracedExitStatus: Int32? { get }
    /// Whether the traced process (or one it started) started another process; false
    /// when the backend cannot tell.
    var startedProcesses: Bool { get }
}

extension TraceSession {
    /// Every event as an `Event`.
    public func poll(timeoutMs: Int32, deliver: (Event) throws -> Void) throws -> Int {
        try poll(timeoutMs: timeoutMs, deliver: deliver, deliverIntegers: { try deliver($0.event) })
    }
}

extension TraceSession {
    public var reapsTracedProcess: Bool { false }
    public var tracedExitStatus: Int32? { nil }
    public var startedProcesses: Bool { false }
}

/// A way of putting probes in place: bpf or ptrace.
public protocol TracingBackend {
    var name: String { get }
    func attach(_ plan: TracePlan) throws(UtapError) -> TraceSession
}
