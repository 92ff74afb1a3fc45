import CLibbpf
import Glibc
import UtapABI
import UtapBPFObject
import UtapCore

/// The bpf backend: loads the prebuilt object (embedded in the binary), configures it for
/// the plan through maps and attach cookies, attaches uprobes through the perf_event path,
/// and reads events from the ring buffer.
public struct BPFBackend: TracingBackend {
    public let name = "bpf"

    public init() {}

    public func attach(_ plan: TracePlan) throws(UtapError) -> TraceSession {
        try BPFSession(plan: plan)
    }
}

/// One attachment: a program at a file offset with a cookie that selects its configuration.
struct Attachment {
    var probe: Int
    var path: String
    var fileOffset: UInt64
    var isReturn: Bool
    var config: utap_probe_config
}

extension Attachment {
    /// Attachments for a plan, in cookie order. A return probe gets a hidden entry program
    /// that remembers the entry time, so its events carry latency.
    static func all(for plan: TracePlan) -> [Attachment] {
        var result: [Attachment] = []
        for (index, probe) in plan.probes.enumerated() {
            var config = utap_probe_config()
            config.flags = UInt32(UTAP_PROBE_EMIT.rawValue)
            config.nfields = UInt32(probe.fields.count)
            config.probe = UInt32(index)
            withUnsafeMutableBytes(of: &config.fields) { raw in
                let fields = raw.bindMemory(to: utap_field_config.self)
                for (i, field) in probe.fields.enumerated() {
                    fields[i] = fieldConfig(field)
                }
            }
            if probe.kind == .return {
                config.flags |= UInt32(UTAP_PROBE_POP_TS.rawValue)
                var push = utap_probe_config()
                push.flags = UInt32(UTAP_PROBE_PUSH_TS.rawValue)
                push.probe = UInt32(index)
                result.append(Attachment(probe: index, path: probe.path, fileOffset: probe.fileOffset, isReturn: false, config: push))
            }
            result.append(Attachment(probe: index, path: probe.path, fileOffset: probe.fileOffset, isReturn: probe.kind == .return, config: config))
        }
        return result
    }

    static func fieldConfig(_ field: FieldSpec) -> utap_field_config {
        var c = utap_field_config()
        switch field.source {
        case .arg(let n): c.source = UInt8(n)
        case .ret: c.source = UInt8(UTAP_SRC_RET.rawValue)
        }
        if case .string(let maxLength) = field.type {
            c.kind = UInt8(UTAP_FIELD_STR.rawValue)
            c.str_len = UInt16(maxLength + 2) // one byte past the limit shows truncation, plus the NUL
        } else {
            c.kind = UInt8(UTAP_FIELD_INT.rawValue)
        }
        return c
    }
}

/// Live BPF object, links and ring buffer. Everything is released in `detach` / deinit.
final class BPFSession: TraceSession {
    private let plan: TracePlan
    private var object: OpaquePointer?
    private var links: [OpaquePointer] = []
    private var ring: OpaquePointer?
    private var lostMapFD: Int32 = -1
    private let decoder: RecordDecoder
    // Set only during poll: the C callback forwards records here.
    private var deliver: ((Event) throws -> Void)?
    private var deliverError: Error?
    private var delivered = 0

    init(plan: TracePlan) throws(UtapError) {
        self.plan = plan
        self.decoder = RecordDecoder(probes: plan.probes)
        LibbpfLog.install()
        do {
            try load()
            try attachAll()
            try openRing()
        } catch {
            detach()
            throw error
        }
    }

    deinit { detach() }

    private func load() throws(UtapError) {
        let attachments = Attachment.all(for: plan)
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
        try setMaxEntries("events", UInt32(plan.bufferBytes))
        try setTracerPid(getpid())
        if bpf_object__load(obj) != 0 {
            throw LibbpfLog.error("cannot load the BPF programs", errno: errno,
                                  hint: "run 'utap doctor' to see what this kernel supports")
        }
        let probesFD = bpf_map__fd(map("probes"))
        lostMapFD = bpf_map__fd(map("lost"))
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

    /// Writes `tracer_tgid` in the object's read-only data before load.
    private func setTracerPid(_ pid: Int32) throws(UtapError) {
        var rodata: OpaquePointer?
        while let next = bpf_object__next_map(object, rodata) {
            rodata = next
            if String(cString: bpf_map__name(next)).hasSuffix(".rodata") { break }
        }
        var size = 0
        guard let rodata, let data = bpf_map__initial_value(rodata, &size), size >= 4 else {
            throw .runtime("the embedded BPF object has no tracer_tgid setting", hint: "rebuild utap ('make bpf build')")
        }
        // tracer_tgid is the only read-only global, at offset 0.
        UnsafeMutableRawPointer(mutating: data).storeBytes(of: UInt32(bitPattern: pid), as: UInt32.self)
    }

    private func setMaxEntries(_ name: String, _ value: UInt32) throws(UtapError) {
        if bpf_map__set_max_entries(map(name), value) != 0 {
            throw LibbpfLog.error("cannot size BPF map \(name)", errno: errno)
        }
    }

    private func attachAll() throws(UtapError) {
        let entry = bpf_object__find_program_by_name(object, "utap_entry")
        let ret = bpf_object__find_program_by_name(object, "utap_return")
        let pid: Int32
        switch plan.scope {
        case .allProcesses: pid = -1
        case .process(let p): pid = p
        }
        for (cookie, attachment) in Attachment.all(for: plan).enumerated() {
            var opts = bpf_uprobe_opts()
            opts.sz = MemoryLayout<bpf_uprobe_opts>.size
            opts.bpf_cookie = UInt64(cookie)
            opts.retprobe = attachment.isReturn
            let link = bpf_program__attach_uprobe_opts(attachment.isReturn ? ret : entry, pid,
                                                      attachment.path, Int(attachment.fileOffset), &opts)
            guard let link, libbpf_get_error(UnsafeRawPointer(link)) == 0 else {
                let code = errno
                let name = plan.probes[attachment.probe].name
                throw LibbpfLog.error("probe '\(name)': cannot attach uprobe to \(attachment.path) at offset 0x\(String(attachment.fileOffset, radix: 16))",
                                      errno: code, hint: code == ESRCH ? "the process exited" : nil)
            }
            links.append(link)
        }
    }

    private func openRing() throws(UtapError) {
        let fd = bpf_map__fd(map("events"))
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let rb = ring_buffer__new(fd, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            let session = Unmanaged<BPFSession>.fromOpaque(ctx).takeUnretainedValue()
            return session.handle(UnsafeRawBufferPointer(start: data, count: Int(size)))
        }, context, nil) else {
            throw LibbpfLog.error("cannot open the ring buffer", errno: errno)
        }
        ring = rb
    }

    private func handle(_ record: UnsafeRawBufferPointer) -> Int32 {
        guard let deliver else { return 0 }
        do {
            try deliver(decoder.decode(record))
            delivered += 1
            return 0
        } catch {
            deliverError = error
            return -1 // stops this consume pass; the rest stays in the ring
        }
    }

    func poll(timeoutMs: Int32, deliver: (Event) throws -> Void) throws -> Int {
        guard let ring else { return 0 }
        delivered = 0
        deliverError = nil
        try withoutActuallyEscaping(deliver) { (callback: @escaping (Event) throws -> Void) in
            self.deliver = callback
            defer { self.deliver = nil }
            // Producers do not wake us per record (see bpf/utap.bpf.c); poll waits for a
            // forced wake-up or the timeout, then consume drains whatever is pending.
            _ = ring_buffer__poll(ring, timeoutMs)
            if deliverError == nil {
                _ = ring_buffer__consume(ring)
            }
            if let error = deliverError { throw error }
        }
        return delivered
    }

    func lostCounts() -> [UInt64] {
        guard lostMapFD >= 0 else { return Array(repeating: 0, count: plan.probes.count) }
        let cpus = Int(libbpf_num_possible_cpus())
        var perCPU = [UInt64](repeating: 0, count: max(cpus, 1))
        return (0..<plan.probes.count).map { index in
            var key = UInt32(index)
            guard bpf_map_lookup_elem(lostMapFD, &key, &perCPU) == 0 else { return 0 }
            return perCPU.reduce(0, +)
        }
    }

    func detach() {
        if let ring {
            ring_buffer__free(ring)
            self.ring = nil
        }
        LinkTeardown.destroy(links)
        links = []
        if let object {
            bpf_object__close(object)
            self.object = nil
        }
        lostMapFD = -1
    }
}

/// Closing a uprobe link waits for an RCU grace period; closing many one after another
/// takes ~0.1 s each (performance.md). Closing them from several threads overlaps the waits.
enum LinkTeardown {
    static func destroy(_ links: [OpaquePointer]) {
        guard links.count > 1 else {
            links.forEach { _ = bpf_link__destroy($0) }
            return
        }
        let workers = min(links.count, 64)
        var threads: [pthread_t] = []
        let batches = (0..<workers).map { w in stride(from: w, to: links.count, by: workers).map { links[$0] } }
        for batch in batches {
            let box = Unmanaged.passRetained(LinkBatch(batch)).toOpaque()
            var thread = pthread_t()
            if pthread_create(&thread, nil, { arg in
                let batch = Unmanaged<LinkBatch>.fromOpaque(arg!).takeRetainedValue()
                batch.links.forEach { _ = bpf_link__destroy($0) }
                return nil
            }, box) == 0 {
                threads.append(thread)
            } else {
                Unmanaged<LinkBatch>.fromOpaque(box).takeRetainedValue().links.forEach { _ = bpf_link__destroy($0) }
            }
        }
        threads.forEach { pthread_join($0, nil) }
    }

    final class LinkBatch {
        let links: [OpaquePointer]
        init(_ links: [OpaquePointer]) { self.links = links }
    }
}
