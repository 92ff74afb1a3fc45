import UtapABI
import UtapCore
import XCTest
@testable import UtapBPF

/// Records decoded in place (`integerEvent`) and as events (`decode`) say the same thing.
final class RecordDecoderTests: XCTestCase {
    private static func probe(_ name: String, _ fields: [(String, FieldType)]) -> ResolvedProbe {
        ResolvedProbe(name: name, kind: .entry,
                      fields: fields.map { FieldSpec(name: $0.0, source: .arg(0), type: $0.1) },
                      path: "/bin/true", function: name, address: 0x1000, fileOffset: 0x1000)
    }

    private let decoder = RecordDecoder(probes: [
        probe("ints", [("a", .s32), ("b", .u64), ("c", .hex)]),
        probe("str", [("s", .string(maxLength: 16))]),
        probe("none", []),
    ], stacks: false)

    /// A record as the BPF side writes it (utap_abi.h), padded to `size` bytes.
    private func record(probe: UInt32, flags: UInt16 = 0, comm: String, values: [UInt64], size: Int? = nil) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size ?? Int(UTAP_EVENT_HEADER_SIZE) + 8 * values.count)
        func put<T>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value) { bytes.replaceSubrange(offset..<(offset + $0.count), with: $0) }
        }
        put(UInt64(1_000_000_123), at: 0)
        put(UInt64(777), at: 8)
        put(Int32(10), at: 16)
        put(Int32(11), at: 20)
        put(probe, at: 24)
        put(UInt16(bytes.count), at: 28)
        put(flags, at: 30)
        for (i, byte) in comm.utf8.prefix(15).enumerated() { bytes[32 + i] = byte }
        for (i, value) in values.enumerated() { put(value, at: Int(UTAP_EVENT_HEADER_SIZE) + 8 * i) }
        return bytes
    }

    func testAnIntegerRecordInPlaceIsTheEventItDecodesTo() throws {
        let cases: [[UInt8]] = [
            record(probe: 0, comm: "app", values: [0xffff_ffff, .max, 0xbeef]),
            // padded by the BPF side to a fixed size: the probe's field count decides
            record(probe: 0, flags: UInt16(UTAP_EVENT_RETURN.rawValue | UTAP_EVENT_LATENCY.rawValue), comm: "worker-thread-1",
                   values: [7, 8, 9], size: Int(UTAP_EVENT_HEADER_SIZE) + 32),
            record(probe: 2, comm: "", values: [], size: Int(UTAP_EVENT_HEADER_SIZE) + 16),
            record(probe: 0, comm: "app", values: [1, 2]),  // shorter than its probe: two fields
        ]
        for bytes in cases {
            try bytes.withUnsafeBytes { record in
                let inPlace = try XCTUnwrap(decoder.integerEvent(record))
                XCTAssertEqual(inPlace.event, decoder.decode(record))
            }
        }
        let latency = record(probe: 0, flags: UInt16(UTAP_EVENT_RETURN.rawValue | UTAP_EVENT_LATENCY.rawValue),
                             comm: "app", values: [1, 2, 3])
        latency.withUnsafeBytes {
            let event = decoder.integerEvent($0)?.event
            XCTAssertEqual(event?.latencyNs, 777)
            XCTAssertEqual(event?.kind, .return)
            XCTAssertEqual(event?.fields, [.signed(1), .unsigned(2), .hex(3)])
        }
    }

    func testRecordsThatNeedAnEventAreNotReadInPlace() {
        let refused: [[UInt8]] = [
            record(probe: 1, comm: "app", values: [0]),                                             // a string field
            record(probe: 0, flags: UInt16(UTAP_EVENT_STACK.rawValue), comm: "app", values: [1, 2, 3]), // a stack
            record(probe: 9, comm: "app", values: []),                                              // no such probe
            Array(record(probe: 0, comm: "app", values: [])[..<40]),                                // too short
        ]
        for bytes in refused {
            bytes.withUnsafeBytes { XCTAssertNil(decoder.integerEvent($0)) }
        }
    }

    func testAThreadRenamedBetweenRecordsGetsItsNewName() throws {
        for name in ["first", "first", "second", "first"] {
            try record(probe: 0, comm: name, values: [1, 2, 3]).withUnsafeBytes { record in
                XCTAssertEqual(try XCTUnwrap(decoder.integerEvent(record)).comm.string, name)
                XCTAssertEqual(decoder.decode(record).comm, name)
            }
        }
    }
}
