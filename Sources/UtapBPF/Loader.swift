import CLibbpf
import CUtapSys
import Glibc
import UtapABI
import UtapBPFObject
import UtapCore

/// The bpf backend: loads the prebuilt object (embedded in the binary), configures it for
/// the plan through maps and attach cookies, attaches uprobes (multi-links where the kernel
/// has them, else one perf event each), and reads events from the ring buffer.
public struct BPFBackend: TracingBackend {
    public let name = "bpf"

    public init() {}

    public func attach(_ plan: TracePlan) throws(UtapError) -> TraceSession {
        try BPFSession(plan: plan)
    }
}

/// Live BPF object, links and ring buffer. Everything is released in `detach` / deinit.
final class BPFSession: TraceSession {
    private let plan: TracePlan
    private let attachments: [Attachment]
    private let path = AttachPath.preferred
    private var object: OpaquePointer?
    private var links: [LiveLink] = []
    private var rings: RingSet?
    /// The ring buffer maps, one per online CPU (the `events` map holds them too).
    private var ringFDs: [Int32] = []
    private let ringCPUs = BPFSession.onlineCPUs()
    private var ringBytes: Int { RingSet.ringBytes(totalBytes: plan.bufferBytes, rings: ringCPUs.count) }
    private let decoder: RecordDecoder
    /// Integer records are staged per CPU and sent to the rings in batches (StageFlusher).
    private let staging = StageFlusher.enabled
    private var flusher: StageFlusher?
    /// The event each record is decoded into, reused so that a record allocates nothing.
    private let scratch: UnsafeMutablePointer<Event>

    init(plan: TracePlan) throws(UtapError) {
        self.plan = plan
        self.attachments = Attachment.all(for: plan)
        self.decoder = RecordDecoder(probes: plan.probes, stacks: plan.userStacks, program: plan.program)
        scratch = .allocate(capacity: 1)
        scratch.initialize(to: RecordDecoder.emptyEvent)
        LibbpfLog.install()
        do {
            try checkSites()
            try load()
            try attachAll()
            try openRings()
            try setGate(open: true)
        } catch {
            detach()
            throw error
        }
    }

    deinit {
        detach()
        scratch.deinitialize(count: 1)
        scratch.deallocate()
    }

    private func load() throws(UtapError) {
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size
        let obj: OpaquePointer? = "utap".withCString { name in
            opts.object_name = name
            return bpf_object__open_mem(utap_bpf_object_data(), Int(utap_bpf_object_size()), &opts)
        }
        guard let obj, libbpf_get_error(UnsafeRawPointer(obj)) == 0 else {
            throw LibbpfLog.error("cannot open the embedded BPF object", errno: errno)
        }
        object = obj
        let count = UInt32(max(plan.probes.count, 1))
        try setMaxEntries("probes", UInt32(max(attachments.count, 1)))
        try setMaxEntries("lost", count)
        try setMaxEntries("counts", count)
        try setMaxEntries("hists", count)
        try setMaxEntries("events", UInt32(max(cpuCount, (ringCPUs.max() ?? 0) + 1)))
        try setMaxEntries("staged", UInt32(cpuCount))
        try createRings()
        // The first ring is the template of the map's values (its type and size).
        if bpf_map__set_inner_map_fd(map("events"), ringFDs[0]) != 0 {
            throw LibbpfLog.error("cannot size the ring buffers", errno: errno)
        }
        // Preallocated maps cost kernel memory (the pending-call table alone is ~17 MB):
        // the ones this session does not use get a single entry.
        let pairs = attachments.contains { $0.config.flags & UInt32(UTAP_PROBE_PUSH_TS.rawValue) != 0 }
        if !pairs { try setMaxEntries("pending", 1) }
        if plan.mode != .count(byPid: true) {
            try setMaxEntries("pid_counts", 1)
            try setMaxEntries("pid_comm", 1)
        }
        if !plan.followForks { try setMaxEntries("traced", 1) }
        try writeSettings()
        for name in ["utap_fork", "utap_exit"] {
            bpf_program__set_autoload(bpf_object__find_program_by_name(obj, name), watchesForks)
        }
        bpf_program__set_autoload(bpf_object__find_program_by_name(obj, "utap_flush"), staging)
        for name in ["utap_entry", "utap_return", "utap_entry_multi", "utap_return_multi"] {
            let prog = bpf_object__find_program_by_name(obj, name)
            let multi = name.hasSuffix("_multi")
            bpf_program__set_autoload(prog, multi == (path == .multiLink))
            if multi {
                bpf_program__set_expected_attach_type(prog, bpf_attach_type(rawValue: UInt32(UTAP_BPF_TRACE_UPROBE_MULTI)))
            }
        }
        if bpf_object__load(obj) != 0 {
            throw LibbpfLog.error("cannot load the BPF programs", errno: errno,
                                  hint: "run 'utap doctor' to see what this kernel supports")
        }
        try writeFilter()
        try installRings()
        if staging {
            flusher = try StageFlusher(program: bpf_program__fd(bpf_object__find_program_by_name(obj, "utap_flush")),
                                       stagedMap: bpf_map__fd(map("staged")), cpus: cpuCount)
        }
        let probesFD = bpf_map__fd(map("probes"))
        for (cookie, attachment) in attachments.enumerated() {
            var key = UInt32(cookie)
            var config = attachment.config
            if bpf_map_update_elem(probesFD, &key, &config, UInt64(BPF_ANY)) != 0 {
                throw LibbpfLog.error("cannot configure probe \(cookie)", errno: errno)
            }
        }
    }

    private func map(_ name: String) -> OpaquePointer? {
        bpf_object__find_map_by_name(object, name)
    }

    /// The plan's --filter program into the one-entry `filter` map.
    private func writeFilter() throws(UtapError) {
        var program = utap_filter()
        program.count = UInt32(plan.filter.count)
        withUnsafeMutableBytes(of: &program.insns) { raw in
            let insns = raw.bindMemory(to: utap_filter_insn.self)
            for (i, step) in plan.filter.prefix(Int(UTAP_FILTER_MAX)).enumerated() {
                var insn = utap_filter_insn()
                insn.op = step.operation.rawValue
                insn.operand = step.operand.rawValue
                insn.cmp = step.comparison.rawValue
                insn.is_signed = step.isSigned ? 1 : 0
                insn.width = step.width
                insn.value = step.value
                insn.value2 = step.value2
                insns[i] = insn
            }
        }
        var key: UInt32 = 0
        if bpf_map_update_elem(bpf_map__fd(map("filter")), &key, &program, UInt64(BPF_ANY)) != 0 {
            throw LibbpfLog.error("cannot load the --filter program", errno: errno)
        }
    }

    /// The map of the object's global variables in `section` (".rodata", ".bss").
    private func globalsMap(_ section: String) -> OpaquePointer? {
        var map: OpaquePointer?
        while let next = bpf_object__next_map(object, map) {
            map = next
            if String(cString: bpf_map__name(next)).hasSuffix(section) { return next }
        }
        return nil
    }

    /// Opens or closes the BPF programs' gate (`gate_open`, bpf/utap.bpf.c): hits count
    /// only between the last link attached and the first detached. Written as the .bss
    /// map's one element (libbpf maps global data for skeletons only).
    private func setGate(open: Bool) throws(UtapError) {
        var key: UInt32 = 0
        var value: UInt32 = open ? 1 : 0
        guard object != nil, let bss = globalsMap(".bss"), bpf_map__value_size(bss) == 4,
              bpf_map_update_elem(bpf_map__fd(bss), &key, &value, UInt64(BPF_ANY)) == 0 else {
            throw LibbpfLog.error("cannot \(open ? "open" : "close") the BPF programs' gate", errno: errno)
        }
    }

    /// Writes `settings` (utap_abi.h) in the object's read-only data before load.
    private func writeSettings() throws(UtapError) {
        var size = 0
        guard let rodata = globalsMap(".rodata"), let initial = bpf_map__initial_value(rodata, &size),
              size >= MemoryLayout<utap_settings>.size else {
            throw .runtime("the embedded BPF object has no settings", hint: "rebuild utap ('make bpf build')")
        }
        var settings = utap_settings()
        settings.tracer_tgid = UInt32(bitPattern: getpid())
        settings.wake_bytes = UInt64(ringBytes / 4)
        settings.staging = staging ? 1 : 0
        // `settings` is the only read-only global, at offset 0.
        UnsafeMutableRawPointer(mutating: initial).storeBytes(of: settings, as: utap_settings.self)
    }

    private func setMaxEntries(_ name: String, _ value: UInt32) throws(UtapError) {
        if bpf_map__set_max_entries(map(name), value) != 0 {
            throw LibbpfLog.error("cannot size BPF map \(name)", errno: errno)
        }
    }

    /// The pid uprobes are bound to; -1 (every process) when following forks, where the
    /// BPF side checks the `traced` set instead.
    private var targetPid: Int32 {
        switch plan.scope {
        case .allProcesses: return -1
        case .process(let pid): return plan.followForks ? -1 : pid
        }
    }

    /// Seeds `traced` with the process and hooks fork and exit before any probe goes in.
    /// Whether the fork and exit tracepoint programs are loaded: for --follow-forks, and to
    /// count the processes a traced one starts where the kernel has BTF (tp_btf programs
    /// need it; without it only --follow-forks fails).
    private var watchesForks: Bool {
        guard case .process = plan.scope else { return false }
        return plan.followForks || access("/sys/kernel/btf/vmlinux", R_OK) == 0
    }

    /// Watches the traced process's forks: for --follow-forks, and otherwise to tell
    /// whether it started processes (`startedProcesses`), which without --follow-forks
    /// may fail quietly (the runner then looks at /proc).
    private func followForks() throws(UtapError) {
        guard watchesForks, case .process(let pid) = plan.scope else { return }
        do throws(UtapError) {
            var key = UInt32(bitPattern: pid)
            var yes: UInt8 = 1
            if bpf_map_update_elem(bpf_map__fd(map("traced")), &key, &yes, UInt64(BPF_ANY)) != 0 {
                throw LibbpfLog.error("--follow-forks: cannot record pid \(pid)", errno: errno)
            }
            for name in ["utap_fork", "utap_exit"] {
                guard let link = bpf_program__attach(bpf_object__find_program_by_name(object, name)),
                      libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
                    throw LibbpfLog.error("--follow-forks: cannot attach to the sched_process_\(name.dropFirst(5)) tracepoint", errno: errno,
                                          hint: "this kernel needs BTF (/sys/kernel/btf/vmlinux) for --follow-forks")
                }
                links.append(.libbpf(link))
            }
        } catch where !plan.followForks {
            return
        }
    }

    /// `startedProcesses` as it was when the object was closed.
    private var startedProcessesAtDetach = false

    var startedProcesses: Bool {
        guard object != nil else { return startedProcessesAtDetach }
        var key: UInt32 = 0, started: UInt64 = 0
        return bpf_map_lookup_elem(bpf_map__fd(map("forks")), &key, &started) == 0 && started > 0
    }

    private func attachAll() throws(UtapError) {
        try followForks()
        switch path {
        case .perfEvent: try attachPerfEvents()
        case .multiLink: try attachMultiLinks()
        }
    }

    private func attachPerfEvents() throws(UtapError) {
        let entry = bpf_object__find_program_by_name(object, "utap_entry")
        let ret = bpf_object__find_program_by_name(object, "utap_return")
        for (cookie, attachment) in attachments.enumerated() {
            var opts = bpf_uprobe_opts()
            opts.sz = MemoryLayout<bpf_uprobe_opts>.size
            opts.bpf_cookie = UInt64(cookie)
            opts.retprobe = attachment.isReturn
            opts.ref_ctr_offset = Int(attachment.semaphoreOffset ?? 0)
            let link = bpf_program__attach_uprobe_opts(attachment.isReturn ? ret : entry, targetPid,
                                                      attachment.path, Int(attachment.fileOffset), &opts)
            guard let link, libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
                throw attachError(errno, probe: plan.probes[attachment.probe].name, path: attachment.path,
                                  offset: " at offset 0x\(String(attachment.fileOffset, radix: 16))")
            }
            links.append(.libbpf(link))
        }
    }

    /// One link per (file, direction); the cookie of each offset is its attachment index.
    private func attachMultiLinks() throws(UtapError) {
        let entry = bpf_program__fd(bpf_object__find_program_by_name(object, "utap_entry_multi"))
        let ret = bpf_program__fd(bpf_object__find_program_by_name(object, "utap_return_multi"))
        var groups: [String: [Int]] = [:]
        var order: [String] = []
        for (cookie, attachment) in attachments.enumerated() {
            let key = (attachment.isReturn ? "r" : "e") + attachment.path
            if groups[key] == nil { order.append(key) }
            groups[key, default: []].append(cookie)
        }
        for key in order {
            let cookies = groups[key]!
            let first = attachments[cookies[0]]
            let offsets = cookies.map { UInt(attachments[$0].fileOffset) }
            let semaphores = cookies.map { UInt(attachments[$0].semaphoreOffset ?? 0) }
            let cookieValues = cookies.map { UInt64($0) }
            let fd = utap_uprobe_multi_link(first.isReturn ? ret : entry, first.path, offsets, semaphores, cookieValues,
                                            UInt32(cookies.count), first.isReturn ? 1 : 0, targetPid)
            guard fd >= 0 else {
                let probes = Set(cookies.map { plan.probes[attachments[$0].probe].name }).sorted()
                throw attachError(-fd, probe: probes.joined(separator: "', '"), path: first.path, offset: "")
            }
            links.append(.fd(fd))
        }
    }

    /// Refuses, before anything is loaded, a uprobe the kernel would mishandle or refuse:
    /// on a vector (AVX) instruction, which it decodes as the legacy opcode byte it
    /// carries, so it refuses some, never fires on others and emulates others as jumps,
    /// corrupting the program (see `InstructionDecoder.entryOffset`); or on one it refuses
    /// (a lock or segment prefix, a system instruction: the ptrace backend's refusals,
    /// which follow the kernel's), which it does silently when the file is mapped after
    /// attaching, as a COMMAND's libraries are. A runtime error: `auto` then takes ptrace
    /// for a vector instruction, which it steps itself.
    private func checkSites() throws(UtapError) {
        var checked = Set<String>()
        for attachment in attachments where checked.insert("\(attachment.fileOffset)@\(attachment.path)").inserted {
            let code = try InstructionDecoder.code(atFileOffset: attachment.fileOffset, in: attachment.path)
            let probe = plan.probes[attachment.probe]
            let address = probe.address &+ (attachment.fileOffset &- probe.fileOffset)
            let place = "0x\(String(address, radix: 16))\(probe.function.map { " in \($0)" } ?? "")"
            switch InstructionAnalysis.uprobeProblem(code, at: address) {
            case .vector:
                throw .runtime("probe '\(probe.name)': the kernel's uprobes mishandle the vector (AVX) instruction at \(place)",
                               hint: "probe another instruction of the function, or use --backend ptrace")
            case .refused(let reason):
                throw .runtime("probe '\(probe.name)': the kernel's uprobes refuse the instruction at \(place) (\(reason))",
                               hint: "probe another instruction of the function")
            case nil:
                continue
            }
        }
    }

    /// The kernel's ENOTSUPP, which strerror does not know.
    static let notSupported: Int32 = 524

    private func attachError(_ code: Int32, probe: String, path: String, offset: String) -> UtapError {
        if code == Self.notSupported {
            // arch_uprobe_analyze_insn: an instruction the kernel will not step or emulate
            // (a lock or segment prefix, a system instruction).
            return .runtime("probe '\(probe)': the kernel's uprobes refuse the instruction at a probe site in \(path)\(offset)",
                            hint: "probe another instruction ('utap list -v' shows where a probe by name goes), or use --backend ptrace")
        }
        return LibbpfLog.error("probe '\(probe)': cannot attach uprobe to \(path)\(offset)", errno: code,
                               hint: code == ESRCH ? "the process exited" : nil)
    }

    /// The CPUs a thread can run on now; a CPU brought online later has no ring, and its
    /// records are counted lost.
    static func onlineCPUs() -> [Int] {
        if case .success(let bytes) = readFileBytes("/sys/devices/system/cpu/online"),
           let line = String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isWhitespace).first,
           let cpus = RingSet.cpus(inList: String(line)),
           !cpus.isEmpty {
            return cpus
        }
        return Array(0..<max(Int(libbpf_num_possible_cpus()), 1))
    }

    /// One ring buffer per online CPU.
    private func createRings() throws(UtapError) {
        for cpu in ringCPUs {
            let fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "utap_ring", 0, 0, UInt32(ringBytes), nil)
            guard fd >= 0 else {
                throw LibbpfLog.error("cannot create a \(ringBytes >> 10) KiB ring buffer for CPU \(cpu)", errno: errno,
                                      hint: "try a smaller --buffer-mb")
            }
            ringFDs.append(fd)
        }
    }

    /// Each ring into `events` at its CPU's index.
    /// In one batch: the kernel waits for an RCU grace period after every write to a map
    /// of maps from user space (10 ms or more here), and after a batch only once.
    private func installRings() throws(UtapError) {
        let events = bpf_map__fd(map("events"))
        var keys = ringCPUs.map { UInt32($0) }
        var values = ringFDs.map { UInt32(bitPattern: $0) }
        var count = UInt32(keys.count)
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        if bpf_map_update_batch(events, &keys, &values, &count, &opts) == 0 { return }
        // A kernel without batch updates for maps of maps: one at a time.
        for (cpu, fd) in zip(ringCPUs, ringFDs) {
            var key = UInt32(cpu)
            var value = UInt32(fd)
            if bpf_map_update_elem(events, &key, &value, UInt64(BPF_ANY)) != 0 {
                throw LibbpfLog.error("cannot install the ring buffer of CPU \(cpu)", errno: errno)
            }
        }
    }

    private func openRings() throws(UtapError) {
        rings = try RingSet(fds: ringFDs, size: ringBytes)
    }

    /// Records handed over per poll at most: producers faster than the reader must not
    /// keep one consume pass (and the stop checks after it) from ever ending.
    static let maxBatch = 16384

    /// The rings are read in place and each record handed to `deliver` as it is decoded:
    /// no closure or event is stored in the session, since reading one from a property
    /// retained and released it on every record (a fifth of the reader's time, perf).
    func poll(timeoutMs: Int32, deliver: (Event) throws -> Void,
              deliverIntegers: (IntegerEvent) throws -> Void) throws -> Int {
        guard let rings else { return 0 }
        // Producers do not wake us per record (see bpf/utap.bpf.c): wait for a forced
        // wake-up or the timeout, then read what was recorded until now.
        rings.wait(timeoutMs: timeoutMs)
        var failure: Error?
        let now = monotonicNow()
        // Once the probes are gone, every stage is sent: nothing more will fill them.
        let watermark = try flusher?.watermark(now: now, all: probesRemoved) ?? now
        let delivered = rings.read(before: watermark, limit: Self.maxBatch) { record in
            if let integers = decoder.integerEvent(record) {
                do {
                    try deliverIntegers(integers)
                } catch {
                    failure = error
                }
                return failure == nil
            }
            // Moved out and back: an event read in place, or captured, is copied per record.
            var event = scratch.move()
            decoder.decode(record, into: &event)
            do {
                try deliver(event)
            } catch {
                failure = error
            }
            scratch.initialize(to: consume event)
            return failure == nil // false: the rest stays in the rings
        }
        if let failure { throw failure }
        return delivered
    }

    func discardPending() -> [UInt64] {
        var discarded = [UInt64](repeating: 0, count: plan.probes.count)
        _ = try? flusher?.watermark(now: .max, all: true)
        // The probes are gone: what is left is finite, and all of it is complete.
        _ = rings?.read(before: .max, limit: .max) { record in
            let probe = Int(RecordDecoder.probeIndex(record))
            if discarded.indices.contains(probe) { discarded[probe] += 1 }
            return true
        }
        return discarded
    }

    func lostCounts() -> [UInt64] {
        perCPUSums("lost")
    }

    func aggregates() -> Aggregates {
        switch plan.mode {
        case .stream:
            return Aggregates(counts: [], processCounts: [], histograms: [])
        case .count:
            return Aggregates(counts: perCPUSums("counts"), processCounts: processCounts(), histograms: [])
        case .latency:
            return Aggregates(counts: [], processCounts: [], histograms: histograms())
        }
    }

    private var cpuCount: Int { max(Int(libbpf_num_possible_cpus()), 1) }

    /// For each probe, its u64 slot of a per-CPU array summed over CPUs.
    private func perCPUSums(_ name: String) -> [UInt64] {
        guard object != nil else { return Array(repeating: 0, count: plan.probes.count) }
        let fd = bpf_map__fd(map(name))
        var perCPU = [UInt64](repeating: 0, count: cpuCount)
        return (0..<plan.probes.count).map { index in
            var key = UInt32(index)
            guard fd >= 0, bpf_map_lookup_elem(fd, &key, &perCPU) == 0 else { return 0 }
            return perCPU.reduce(0, +)
        }
    }

    private func processCounts() -> [ProcessCount] {
        guard object != nil else { return [] }
        let fd = bpf_map__fd(map("pid_counts"))
        guard fd >= 0 else { return [] }
        var result: [ProcessCount] = []
        var perCPU = [UInt64](repeating: 0, count: cpuCount)
        var key = utap_pid_key(), next = utap_pid_key()
        var first = true
        while withUnsafeMutablePointer(to: &key, { k in
            bpf_map_get_next_key(fd, first ? nil : UnsafeRawPointer(k), &next)
        }) == 0 {
            first = false
            key = next
            if bpf_map_lookup_elem(fd, &key, &perCPU) == 0 {
                var name = [UInt8](repeating: 0, count: 16)
                let known = bpf_map_lookup_elem(bpf_map__fd(map("pid_comm")), &key, &name) == 0
                let comm = known ? String(decoding: name.prefix { $0 != 0 }, as: UTF8.self) : "?"
                result.append(ProcessCount(probe: Int(key.probe), pid: Int32(bitPattern: key.pid), comm: comm,
                                           count: perCPU.reduce(0, +)))
            }
        }
        return result
    }

    private func histograms() -> [LatencyHistogram] {
        guard object != nil else { return [] }
        let fd = bpf_map__fd(map("hists"))
        // Per-CPU values come back one after another, each rounded up to 8 bytes.
        let stride = (MemoryLayout<utap_histogram>.size + 7) & ~7
        var raw = [UInt8](repeating: 0, count: stride * cpuCount)
        return (0..<plan.probes.count).map { index in
            var total = LatencyHistogram()
            var key = UInt32(index)
            guard fd >= 0, bpf_map_lookup_elem(fd, &key, &raw) == 0 else { return total }
            raw.withUnsafeBytes { bytes in
                for cpu in 0..<cpuCount {
                    let base = cpu * stride
                    var h = LatencyHistogram()
                    h.count = bytes.loadUnaligned(fromByteOffset: base, as: UInt64.self)
                    h.sumNs = bytes.loadUnaligned(fromByteOffset: base + 8, as: UInt64.self)
                    h.maxNs = bytes.loadUnaligned(fromByteOffset: base + 16, as: UInt64.self)
                    for b in 0..<LatencyHistogram.bucketCount {
                        h.buckets[b] = bytes.loadUnaligned(fromByteOffset: base + 24 + b * 8, as: UInt64.self)
                    }
                    total.add(h)
                }
            }
            return total
        }
    }

    private var probesRemoved = false

    func removeProbes() {
        try? setGate(open: false)
        LinkTeardown.destroy(links)
        links = []
        probesRemoved = true
    }

    func detach() {
        removeProbes()
        rings = nil
        flusher = nil
        for fd in ringFDs { close(fd) }
        ringFDs = []
        if let object {
            startedProcessesAtDetach = startedProcesses
            bpf_object__close(object)
            self.object = nil
        }
    }
}
