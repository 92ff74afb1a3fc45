import Glibc
import UtapABI
import UtapCore

/// Turns ring-buffer records (struct utap_event, utap_abi.h) into `Event` values.
/// Runs once per event: field types are kept in one flat array so decoding copies no
/// reference-counted probe description.
final class RecordDecoder {
    /// Behind a pointer: an `IntegerEvent` refers to its probe's types in place.
    private let fieldTypes: UnsafeMutableBufferPointer<FieldType>
    /// Probe i's field types are fieldTypes[fieldStart[i] ..< fieldStart[i + 1]].
    private let fieldStart: [Int]
    /// Whether probe i's fields are all integers (no strings): its records can be handed
    /// over as `IntegerEvent`s.
    private let integersOnly: [Bool]
    private let memory = ProcessMemory()
    /// Only with --stack: it indexes the probed files' build IDs when made.
    private let symbolizer: Symbolizer?

    /// Where strings of processes gone before their records were read are looked for.
    private let stringFiles: StringFiles

    init(probes: [ResolvedProbe], stacks: Bool, program: String? = nil) {
        stringFiles = StringFiles(candidates: Array(Set(probes.map(\.path) + (program.map { [$0] } ?? []))).sorted())
        let types = probes.flatMap { $0.fields.map(\.type) }
        fieldTypes = .allocate(capacity: types.count)
        _ = fieldTypes.initialize(from: types)
        fieldStart = probes.reduce(into: [0]) { $0.append($0.last! + $1.fields.count) }
        integersOnly = probes.map { probe in
            !probe.fields.contains { if case .string = $0.type { return true } else { return false } }
        }
        symbolizer = stacks ? Symbolizer(knownFiles: Array(Set(probes.map(\.path))).sorted()) : nil
    }

    deinit {
        fieldTypes.deinitialize()
        fieldTypes.deallocate()
    }

    /// Where struct utap_event keeps the thread's name (utap_abi.c asserts it).
    static let commOffset = 32

    /// The probe index of a record (all ones when it is too short to have one).
    static func probeIndex(_ record: UnsafeRawBufferPointer) -> UInt32 {
        record.count >= 28 ? record.loadUnaligned(fromByteOffset: 24, as: UInt32.self) : .max
    }

    /// What `decode(_:into:)` starts from.
    static let emptyEvent = Event(timestampNs: 0, pid: 0, tid: 0, comm: "", probe: 0, kind: .entry, fields: [])

    func decode(_ record: UnsafeRawBufferPointer) -> Event {
        var event = Self.emptyEvent
        decode(record, into: &event)
        return event
    }

    /// The record as an `IntegerEvent` reading its fields in place, or nil when it needs an
    /// `Event`: a probe with string fields, a record with a stack, one too short.
    @inline(__always)
    func integerEvent(_ record: UnsafeRawBufferPointer) -> IntegerEvent? {
        guard record.count >= Int(UTAP_EVENT_HEADER_SIZE) else { return nil }
        let index = Int(Self.probeIndex(record))
        let flags = record.loadUnaligned(fromByteOffset: 30, as: UInt16.self)
        guard index + 1 < fieldStart.count, integersOnly[index], flags & UInt16(UTAP_EVENT_STACK.rawValue) == 0 else {
            return nil
        }
        let types = heldTypes(record, probe: index)
        let latency = record.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        return IntegerEvent(
            timestampNs: record.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
            pid: record.loadUnaligned(fromByteOffset: 16, as: Int32.self),
            tid: record.loadUnaligned(fromByteOffset: 20, as: Int32.self),
            comm: ThreadName(bytes: record.baseAddress! + Self.commOffset),
            probe: index,
            kind: flags & UInt16(UTAP_EVENT_RETURN.rawValue) != 0 ? .return : .entry,
            latencyNs: flags & UInt16(UTAP_EVENT_LATENCY.rawValue) != 0 ? latency : nil,
            values: record.baseAddress! + Int(UTAP_EVENT_HEADER_SIZE),
            types: UnsafeBufferPointer(rebasing: fieldTypes[types]))
    }

    /// Where in `fieldTypes` are the types of the fields `record` holds values for: its
    /// probe's, but fewer when the record is cut short (the BPF side never writes one);
    /// none for an index the loader did not configure.
    @inline(__always)
    private func heldTypes(_ record: UnsafeRawBufferPointer, probe index: Int) -> Range<Int> {
        guard index + 1 < fieldStart.count else { return 0..<0 }
        let first = fieldStart[index]
        return first..<(first + min(fieldStart[index + 1] - first, (record.count - Int(UTAP_EVENT_HEADER_SIZE)) / 8))
    }

    /// Overwrites `event` with the record, reusing its fields' storage: the reader decodes
    /// every record into the same event, so a record allocates nothing.
    func decode(_ record: UnsafeRawBufferPointer, into event: inout Event) {
        // Field by field at the ABI's offsets: a record is shorter than struct utap_event
        // when the probe has fewer than UTAP_MAX_FIELDS fields.
        guard record.count >= Int(UTAP_EVENT_HEADER_SIZE) else {
            // The BPF side never writes one; decode it as an event of no probe.
            event = Self.emptyEvent
            event.probe = -1
            return
        }
        event.timestampNs = record.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        let latency = record.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        let pid = record.loadUnaligned(fromByteOffset: 16, as: Int32.self)
        event.pid = pid
        event.tid = record.loadUnaligned(fromByteOffset: 20, as: Int32.self)
        let index = Int(Self.probeIndex(record))
        event.probe = index
        let flags = record.loadUnaligned(fromByteOffset: 30, as: UInt16.self)
        event.kind = flags & UInt16(UTAP_EVENT_RETURN.rawValue) != 0 ? .return : .entry
        let types = heldTypes(record, probe: index)
        // Overwritten in place (records of one probe follow each other): removeAll and
        // append went through Array's generic range replacement on every record.
        let count = types.count
        if event.fields.count != count {
            event.fields = [FieldValue](repeating: .unsigned(0), count: count)
        }
        // One uniqueness check per record, not one per field.
        event.fields.withUnsafeMutableBufferPointer { fields in
            for i in 0..<count {
                let raw = record.loadUnaligned(fromByteOffset: Int(UTAP_EVENT_HEADER_SIZE) + i * 8, as: UInt64.self)
                fields[i] = value(raw, type: fieldTypes[types.lowerBound + i], record: record, pid: pid)
            }
        }
        event.comm = comm(record)
        event.latencyNs = flags & UInt16(UTAP_EVENT_LATENCY.rawValue) != 0 ? latency : nil
        event.stack = flags & UInt16(UTAP_EVENT_STACK.rawValue) != 0 ? stack(record, pid: pid) : nil
    }

    /// The name `lastCommText` was made from: a thread's name rarely changes between
    /// records, and making a String validates UTF-8 each time.
    /// Unchecked for exclusivity: read and written once per record, never overlapping.
    @exclusivity(unchecked) private var lastComm: ThreadName?
    @exclusivity(unchecked) private var lastCommText = ""

    @inline(__always)
    private func comm(_ record: UnsafeRawBufferPointer) -> String {
        let name = ThreadName(bytes: record.baseAddress! + Self.commOffset)
        if lastComm == name { return lastCommText }
        lastComm = name
        lastCommText = name.string
        return lastCommText
    }

    /// The user stack at the end of a record (layout in utap_abi.h), symbolized.
    func stack(_ record: UnsafeRawBufferPointer, pid: Int32) -> [String] {
        guard record.count >= Int(UTAP_EVENT_HEADER_SIZE) + 8 else { return [] }
        let counts = record.loadUnaligned(fromByteOffset: record.count - 8, as: UInt64.self)
        let frames = Int(counts & 0xffff_ffff), ids = Int(counts >> 32)
        let idSize = Int(UTAP_BUILD_ID_FRAME_SIZE)
        let start = record.count - 8 - 8 * frames - idSize * ids
        guard frames <= Int(UTAP_STACK_MAX), ids <= Int(UTAP_STACK_MAX), start >= Int(UTAP_EVENT_HEADER_SIZE) else { return [] }
        // A walk through code without frame pointers can end on a zero "return address".
        let addresses = (0..<frames).map { record.loadUnaligned(fromByteOffset: start + 8 * $0, as: UInt64.self) }
            .prefix { $0 != 0 }
        let idStart = start + 8 * frames
        let buildIDs = (0..<ids).map { i -> BuildIDFrame in
            let at = idStart + idSize * i
            // struct bpf_stack_build_id: s32 status (1: build ID and offset valid), 20-byte ID, u64.
            let status = record.loadUnaligned(fromByteOffset: at, as: Int32.self)
            return BuildIDFrame(valid: status == 1, buildID: Array(record[(at + 4)..<(at + 24)]),
                                fileOffset: record.loadUnaligned(fromByteOffset: at + 24, as: UInt64.self))
        }
        return symbolizer?.frames(pid: pid, addresses: Array(addresses), buildIDFrames: buildIDs) ?? []
    }

    /// Interprets a raw 64-bit value; for strings, `raw` is (offset << 32 | read result).
    func value(_ raw: UInt64, type: FieldType, record: UnsafeRawBufferPointer, pid: Int32) -> FieldValue {
        switch type {
        case .string(let maxLength):
            let offset = Int(raw >> 32)
            let result = Int32(bitPattern: UInt32(truncatingIfNeeded: raw))
            if result <= 0 {
                // BPF could not read (a page never touched): struct utap_string_origin
                // follows. Read the process's memory, or when it is gone, the file.
                let size = MemoryLayout<utap_string_origin>.size
                guard offset + size <= record.count else { return .unreadable(address: 0) }
                let origin = record.loadUnaligned(fromByteOffset: offset, as: utap_string_origin.self)
                guard let late = memory.string(pid: pid, address: origin.address, maxLength: maxLength)
                        ?? stringFiles.string(origin, maxLength: maxLength) else {
                    return .unreadable(address: origin.address)
                }
                return .string(late.bytes, truncated: late.truncated)
            }
            guard offset + Int(result) <= record.count else { return .unreadable(address: 0) }
            // result counts the NUL; BPF read one byte more than is kept, to see truncation.
            let length = Int(result) - 1
            let kept = min(length, maxLength)
            return .string(Array(record[offset..<(offset + kept)]), truncated: length > maxLength)
        default:
            return .integer(raw, as: type)
        }
    }
}

/// The files whose read-only mappings a string BPF could not read may come from, found
/// by identity (the record's device and inode) among the probed files, the program and
/// the libraries they link, indexed the first time a process is gone before its string
/// could be read from its memory.
final class StringFiles {
    private struct Identity: Hashable {
        var major: UInt64, minor: UInt64, inode: UInt64
    }

    private let candidates: [String]
    private lazy var paths: [Identity: String] = index()

    init(candidates: [String]) {
        self.candidates = candidates
    }

    func string(_ origin: utap_string_origin, maxLength: Int) -> (bytes: [UInt8], truncated: Bool)? {
        guard origin.ino != 0 else { return nil }
        // The kernel's dev_t is major << 20 | minor.
        let identity = Identity(major: origin.dev >> 20, minor: origin.dev & 0xFFFFF, inode: origin.ino)
        guard let path = paths[identity] else { return nil }
        return ProcessMemory.string(file: path, at: origin.file_offset, maxLength: maxLength)
    }

    private func index() -> [Identity: String] {
        var files = candidates
        for path in candidates {
            guard let image = try? ELFImage.open(path) else { continue }
            files += image.needed.compactMap { LibraryResolver.needed($0, of: image) }
            if let loader = image.interpreter { files.append(loader) }
        }
        var paths: [Identity: String] = [:]
        for path in files {
            var info = stat()
            guard stat(path, &info) == 0 else { continue }
            // glibc's dev_t: minor in bits 0-7 and 20-43, major in bits 8-19 and 44-63.
            let dev = UInt64(info.st_dev)
            let major = (dev >> 8) & 0xFFF | (dev >> 32) & ~0xFFF
            let minor = dev & 0xFF | (dev >> 12) & ~0xFF
            paths[Identity(major: major, minor: minor, inode: UInt64(info.st_ino))] = path
        }
        return paths
    }
}
