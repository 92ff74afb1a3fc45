import UtapCore
import UtapOutput
import XCTest

/// An `IntegerEvent` is written exactly as the `Event` it stands for, by both writers.
final class IntegerEventTests: XCTestCase {
    private static let types: [FieldType] = [.s8, .s16, .s32, .s64, .u8, .u16, .u32, .u64, .hex, .pointer, .bool]
    private static let probes = [
        ProbeDescriptor(name: "/opt/app:f", kind: .entry,
                        fieldNames: ["a", "b", "c", "d", "e", "f", "g", "h", "x", "p", "t"]),
        ProbeDescriptor(name: "/opt/app:f%return", kind: .return, fieldNames: ["r"]),
    ]
    /// Raw register values that exercise every width's sign and truncation.
    private static let raws: [UInt64] = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fff_ffff,
                                         0x8000_0000, 0xffff_ffff, 0x1_0000_0000, .max, .max - 1, 1 << 63,
                                         0x0123_4567_89ab_cdef]

    /// The events of one stream: every raw value in every field, entries and returns,
    /// with and without latency, a thread change, a probe the writer does not know and
    /// more values than the probe names.
    private func stream(_ body: (IntegerEvent) throws -> Void) rethrows {
        var values = [UInt64](repeating: 0, count: 12)
        try Self.types.withUnsafeBufferPointer { types in
            for (step, raw) in Self.raws.enumerated() {
                for i in values.indices { values[i] = raw &+ UInt64(i) }
                try values.withUnsafeBytes { bytes in
                    let base = bytes.baseAddress!
                    var e = IntegerEvent(timestampNs: 1_700_000_000_000_000_000 + UInt64(step) * 999_999,
                                         pid: 42, tid: step < 8 ? 43 : 44, comm: ThreadName(exactly: step < 8 ? "app" : "wörker")!,
                                         probe: 0, kind: .entry, latencyNs: nil, values: base, types: types)
                    try body(e)
                    e.probe = 1
                    e.kind = .return
                    e.latencyNs = raw
                    e.types = UnsafeBufferPointer(rebasing: types[7..<8])
                    try body(e)
                    e.probe = 7 // unknown: the writers name it probe#7 and its fields field0…
                    e.types = UnsafeBufferPointer(rebasing: types[0..<3])
                    try body(e)
                    // one value more than probe 1 names
                    e.probe = 1
                    e.types = UnsafeBufferPointer(rebasing: types[2..<4])
                    try body(e)
                }
            }
        }
    }

    private func assertSameOutput(_ makeWriter: (OutputBuffer) -> EventWriter) throws {
        var count = 0
        let direct = try captured { output in
            let writer = makeWriter(output)
            try stream { try writer.write($0); count += 1 }
        }
        let built = try captured { output in
            let writer = makeWriter(output)
            try stream { try writer.write($0.event) }
        }
        XCTAssertEqual(count, Self.raws.count * 4)
        XCTAssertFalse(direct.isEmpty)
        assertBytes(direct, String(decoding: built, as: UTF8.self))
    }

    func testJSONWriterWritesAnIntegerEventAsItsEvent() throws {
        try assertSameOutput { JSONWriter(probes: Self.probes, output: $0) }
    }

    func testTextWriterWritesAnIntegerEventAsItsEvent() throws {
        try assertSameOutput { TextWriter(probes: Self.probes, output: $0, startNs: 1_700_000_000_000_000_000) }
    }

    func testFieldsAreInterpretedByTheirTypes() {
        let raw: [UInt64] = [0xff, 0xff, 0xffff_ffff, 0xffff_ffff, 0x1234, 0, 2]
        let types: [FieldType] = [.s8, .u8, .s32, .u32, .hex, .bool, .bool]
        let fields = raw.withUnsafeBytes { bytes in
            types.withUnsafeBufferPointer { types in
                IntegerEvent(timestampNs: 1, pid: 2, tid: 3, comm: ThreadName(exactly: "c")!, probe: 0, kind: .entry, latencyNs: nil,
                             values: bytes.baseAddress!, types: types).event.fields
            }
        }
        XCTAssertEqual(fields, [.signed(-1), .unsigned(255), .signed(-1), .unsigned(0xffff_ffff), .hex(0x1234),
                                .bool(false), .bool(true)])
    }
}
