// The ring-buffer record decoder (UtapBPF's RecordDecoder): any record decodes to an event
// that keeps to its probe's field types and the ABI's limits. The input is the record.
import UtapABI
import UtapCore
@testable import UtapBPF

/// Field types enough to take every path of the decoder: none, every integer type, and
/// strings of the shortest, default and longest limits.
private let probeFields: [[FieldType]] = [
    [],
    [.s8, .s16, .s32, .s64, .u8, .u16],
    [.u32, .u64, .hex, .pointer, .bool, .string(maxLength: FieldType.defaultStringLength)],
    [.string(maxLength: 1), .string(maxLength: FieldType.maxStringLength), .s64, .string(maxLength: 16), .bool, .u8],
]

/// Stacks are symbolized against libc (a known file, by build ID), as after the traced
/// process has exited.
private let decoder = RecordDecoder(probes: probeFields.enumerated().map { index, types in
    ResolvedProbe(name: "probe\(index)", kind: .entry,
                  fields: types.enumerated().map { FieldSpec(name: "f\($0)", source: .arg($0), type: $1) },
                  path: "/lib/x86_64-linux-gnu/libc.so.6", function: nil, address: 0, fileOffset: 0)
}, stacks: true)

/// The decoder reads the event's process (/proc/PID/mem for strings BPF could not read,
/// /proc/PID/maps for stacks): the pid is pinned above the kernel's pid_max, to a process
/// that cannot exist, so no real process is read and runs are repeatable.
private let absentPid = Int32.max

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRecordDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var record = Array(UnsafeBufferPointer(start: data, count: size))
    if record.count >= 20 {
        withUnsafeBytes(of: absentPid.littleEndian) { record.replaceSubrange(16..<20, with: $0) }
    }
    let event = record.withUnsafeBytes { decoder.decode($0) }
    // Read in place, a record of integer fields says what its decoded event says.
    if let inPlace = record.withUnsafeBytes({ decoder.integerEvent($0)?.event }) {
        precondition(inPlace == event, "in place \(inPlace) decoded \(event)")
    }
    let types = probeFields.indices.contains(event.probe) ? probeFields[event.probe] : []
    // Every field whose value the record holds; a record cut short (never written by BPF)
    // loses the fields past its end.
    let held = min(types.count, max(0, (record.count - Int(UTAP_EVENT_HEADER_SIZE)) / 8))
    precondition(event.fields.count == held, "\(event.fields.count) fields for probe \(event.probe)")
    for (value, type) in zip(event.fields, types) {
        check(value, type: type)
    }
    precondition(event.comm.unicodeScalars.count <= 16, "comm longer than the kernel's 16 bytes")
    if let stack = event.stack {
        precondition(stack.count <= Int(UTAP_STACK_MAX) && stack.allSatisfy { $0.hasPrefix("0x") }, "bad stack \(stack)")
    }
    return 0
}

/// A value is of its field's type: strings within their limit, integers in their range.
private func check(_ value: FieldValue, type: FieldType) {
    switch (value, type) {
    case (.string(let bytes, _), .string(let maxLength)):
        precondition(bytes.count <= maxLength, "\(bytes.count) bytes kept of a str[\(maxLength)]")
    case (.unreadable, .string):
        break
    case (.signed(let v), .s8): precondition(Int8(exactly: v) != nil, "s8 out of range")
    case (.signed(let v), .s16): precondition(Int16(exactly: v) != nil, "s16 out of range")
    case (.signed(let v), .s32): precondition(Int32(exactly: v) != nil, "s32 out of range")
    case (.unsigned(let v), .u8): precondition(UInt8(exactly: v) != nil, "u8 out of range")
    case (.unsigned(let v), .u16): precondition(UInt16(exactly: v) != nil, "u16 out of range")
    case (.unsigned(let v), .u32): precondition(UInt32(exactly: v) != nil, "u32 out of range")
    case (.signed, .s64), (.unsigned, .u64), (.hex, .hex), (.pointer, .pointer), (.bool, .bool):
        break
    default:
        preconditionFailure("\(value) decoded for a field of type \(type)")
    }
}
