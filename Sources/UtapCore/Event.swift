/// Whether an event fired on function entry (or any instruction) or on return.
public enum ProbeKind: String, Sendable {
    case entry
    case `return`
}

/// One decoded field of an event, already interpreted according to its declared type.
public enum FieldValue: Equatable, Sendable {
    case signed(Int64)
    case unsigned(UInt64)
    /// `x`: written as a hex string.
    case hex(UInt64)
    /// `ptr`: written as a hex string.
    case pointer(UInt64)
    case bool(Bool)
    /// Bytes as read from the target, without the terminating NUL. `truncated` when the
    /// string was longer than the field's limit.
    case string([UInt8], truncated: Bool)
    /// The pointer could not be read (NULL, unmapped): the address is kept for the user.
    case unreadable(address: UInt64)
}

extension FieldValue {
    /// A register-sized raw value interpreted as `type` (not for strings, which are read
    /// through the pointer). Inlinable: the bpf reader calls it for every field.
    @inlinable
    public static func integer(_ raw: UInt64, as type: FieldType) -> FieldValue {
        switch type {
        case .s8: return .signed(Int64(Int8(truncatingIfNeeded: raw)))
        case .s16: return .signed(Int64(Int16(truncatingIfNeeded: raw)))
        case .s32: return .signed(Int64(Int32(truncatingIfNeeded: raw)))
        case .s64: return .signed(Int64(bitPattern: raw))
        case .u8: return .unsigned(UInt64(UInt8(truncatingIfNeeded: raw)))
        case .u16: return .unsigned(UInt64(UInt16(truncatingIfNeeded: raw)))
        case .u32: return .unsigned(UInt64(UInt32(truncatingIfNeeded: raw)))
        case .u64: return .unsigned(raw)
        case .hex: return .hex(raw)
        case .pointer, .string: return .pointer(raw)
        case .bool: return .bool(raw != 0)
        }
    }
}

/// One probe hit, the same value whichever backend produced it.
public struct Event: Equatable, Sendable {
    /// CLOCK_MONOTONIC nanoseconds.
    public var timestampNs: UInt64
    public var pid: Int32
    public var tid: Int32
    public var comm: String
    /// Index of the probe in the session's probe list.
    public var probe: Int
    public var kind: ProbeKind
    public var fields: [FieldValue]
    /// Entry-to-return time, on return events when the entry was seen.
    public var latencyNs: UInt64?
    /// Symbolized user stack, innermost first (`--stack`).
    public var stack: [String]?

    public init(timestampNs: UInt64, pid: Int32, tid: Int32, comm: String, probe: Int,
                kind: ProbeKind, fields: [FieldValue], latencyNs: UInt64? = nil,
                stack: [String]? = nil) {
        self.timestampNs = timestampNs
        self.pid = pid
        self.tid = tid
        self.comm = comm
        self.probe = probe
        self.kind = kind
        self.fields = fields
        self.latencyNs = latencyNs
        self.stack = stack
    }
}

/// A hit whose fields are all integers, seen in place: the raw 64-bit value of each field
/// where the backend recorded it, and the fields' types. The bpf reader hands most events
/// over this way, since building an `Event` (an array of enums) was a good part of its
/// cost per event. It stands for `event` exactly: writers must print both the same. Its
/// pointers are valid only during the call that hands it over.
public struct IntegerEvent {
    public var timestampNs: UInt64
    public var pid: Int32
    public var tid: Int32
    public var comm: ThreadName
    public var probe: Int
    public var kind: ProbeKind
    public var latencyNs: UInt64?
    /// Field i's raw value is the 8 bytes at offset 8 * i (any alignment).
    public var values: UnsafeRawPointer
    /// Field i's type; the count is the number of fields.
    public var types: UnsafeBufferPointer<FieldType>

    public init(timestampNs: UInt64, pid: Int32, tid: Int32, comm: ThreadName, probe: Int, kind: ProbeKind,
                latencyNs: UInt64?, values: UnsafeRawPointer, types: UnsafeBufferPointer<FieldType>) {
        self.timestampNs = timestampNs
        self.pid = pid
        self.tid = tid
        self.comm = comm
        self.probe = probe
        self.kind = kind
        self.latencyNs = latencyNs
        self.values = values
        self.types = types
    }

    @inlinable
    public var fieldCount: Int { types.count }

    @inlinable
    public func field(_ index: Int) -> FieldValue {
        .integer(values.loadUnaligned(fromByteOffset: 8 * index, as: UInt64.self), as: types[index])
    }

    /// The same hit as an `Event`.
    public var event: Event {
        Event(timestampNs: timestampNs, pid: pid, tid: tid, comm: comm.string, probe: probe, kind: kind,
              fields: (0..<fieldCount).map(field), latencyNs: latencyNs)
    }
}

/// A thread's name as the kernel keeps it (TASK_COMM_LEN: at most 15 bytes, NUL-padded
/// to 16), held in two words: an event carries it without reference counting, and
/// comparing two is two integer compares.
public struct ThreadName: Hashable, Sendable {
    public var low: UInt64
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The 16 bytes at `bytes`.
    @inlinable
    public init(bytes: UnsafeRawPointer) {
        low = bytes.loadUnaligned(as: UInt64.self)
        high = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
    }

    /// The name `string` is, or nil when it is longer than 16 bytes or holds a NUL.
    public init?(exactly string: String) {
        var bytes = (UInt64(0), UInt64(0))
        let fits = withUnsafeMutableBytes(of: &bytes) { buffer -> Bool in
            var count = 0
            for byte in string.utf8 {
                guard count < 16, byte != 0 else { return false }
                buffer[count] = byte
                count += 1
            }
            return true
        }
        guard fits else { return nil }
        (low, high) = bytes
    }

    /// The name's bytes, up to the first NUL.
    public func withBytes<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        withUnsafeBytes(of: (low, high)) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            return body(UnsafeBufferPointer(rebasing: bytes.prefix { $0 != 0 }))
        }
    }

    /// The name as text; bytes that are not UTF-8 become U+FFFD.
    public var string: String {
        withBytes { String(decoding: $0, as: UTF8.self) }
    }
}

/// What a writer needs to know about each probe of a session: its display name (the probe
/// text without fields, e.g. `libc:malloc%return`), its kind and its field names in order.
public struct ProbeDescriptor: Equatable, Sendable {
    public var name: String
    public var kind: ProbeKind
    public var fieldNames: [String]

    public init(name: String, kind: ProbeKind, fieldNames: [String]) {
        self.name = name
        self.kind = kind
        self.fieldNames = fieldNames
    }
}

/// Totals at the end of a session, per probe in session order.
public struct TraceSummary: Equatable, Sendable {
    public var events: [UInt64]
    public var lost: [UInt64]

    public init(events: [UInt64], lost: [UInt64]) {
        self.events = events
        self.lost = lost
    }

    public var totalEvents: UInt64 { events.reduce(0, +) }
    public var totalLost: UInt64 { lost.reduce(0, +) }
}
