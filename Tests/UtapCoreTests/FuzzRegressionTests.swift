import Foundation
import XCTest
@testable import UtapCore

/// Inputs that made a fuzz harness fail (RELIABILITY.md), each run through the code path
/// that failed. The inputs are the files in fuzz/regressions/HARNESS/, which `make fuzz`
/// also replays.
final class FuzzRegressionTests: XCTestCase {
    private func path(_ harness: String, _ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fuzz/regressions/\(harness)/\(name)").path
    }

    private func input(_ harness: String, _ name: String) throws -> [UInt8] {
        let path = path(harness, name)
        return try XCTUnwrap(FileManager.default.contents(atPath: path).map { Array($0) }, "missing \(path)")
    }

    private func elfImage(_ name: String) throws -> ELFImage {
        try ELFImage.open(path("ELFImage", name))
    }

    /// A PT_LOAD segment 2^64 - 2^40 bytes long: the file offset of its last byte is past
    /// off_t, and computing it trapped.
    func testSegmentPastAnyFileOffset() throws {
        let image = try elfImage("elf-segment-offset-overflow")
        let segment = try XCTUnwrap(image.segments.first { $0.fileSize > UInt64(off_t.max) })
        let last = segment.virtualAddress + segment.fileSize - 1
        XCTAssertNil(image.fileOffset(ofVirtualAddress: last))
        XCTAssertNil(image.bytes(atVirtualAddress: last, count: 16))
        XCTAssertEqual(image.fileOffset(ofVirtualAddress: segment.virtualAddress), segment.fileOffset)
    }

    /// A DT_NEEDED whose string offset is past Int.max: converting it trapped; now it names
    /// nothing.
    func testDynamicStringOffsetPastIntMax() throws {
        let image = try elfImage("elf-dynamic-string-offset")
        XCTAssertEqual(image.needed, [])
    }

    /// A symbol whose range runs past 2^64: the lookup's running maximum of end addresses
    /// wrapped, and addresses inside the symbol found no function.
    func testSymbolRunningToTheTopOfTheAddressSpace() throws {
        let image = try elfImage("elf-symbol-wraps")
        let wrapping = try XCTUnwrap(image.functions.first { $0.address.addingReportingOverflow($0.size).overflow })
        for address in [wrapping.address, wrapping.address + (UInt64.max - wrapping.address) / 2, UInt64.max] {
            XCTAssertNotNil(image.enclosingFunction(of: address), "0x\(String(address, radix: 16))")
        }
    }

    /// An SDT argument of size Int.min: abs() of it trapped.
    func testSDTArgumentSizeIntMin() throws {
        let text = String(decoding: try input("SDTNotes", "sdt-size-int-min"), as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("-9223372036854775808@"))
        XCTAssertNil(USDTArgument.parse(text[...]))
    }

    /// Instruction harness inputs: 8-byte address, 8-byte stub address, code.
    private func plan(_ name: String) throws -> InstructionPlan {
        let bytes = try input("Instruction", name)
        let address = bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let stub = bytes[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return InstructionAnalysis.plan(Array(bytes[16...]), at: address, stub: stub)
    }

    /// `xor %eax,%eax` at the last address: the address after it overflowed.
    func testInstructionAtTheTopOfTheAddressSpace() throws {
        XCTAssertEqual(try plan("instruction-next-overflow"),
                       .step(OutOfLineStep(bytes: [0x31, 0xC0], fixup: .instructionPointer, clearsTrapFlag: false, repeats: false)))
    }

    /// A rip-relative `lea` 2^63 bytes from its stub: the displacement's shift overflowed
    /// Int64 (found by review of the harness's relocation check).
    func testRipRelativeOperandOutOfReach() throws {
        guard case .refuse(let reason) = try plan("rip-relative-far-stub") else {
            return XCTFail("a displacement 2^63 away was relocated")
        }
        XCTAssertTrue(reason.contains("out of reach"), reason)
    }
}
