import XCTest
@testable import UtapCore

final class InstructionDecoderTests: XCTestCase {
    /// endbr64; push rbp; mov rbp, rsp; ret
    let prologue: [UInt8] = [0xF3, 0x0F, 0x1E, 0xFA, 0x55, 0x48, 0x89, 0xE5, 0xC3]

    func testBoundariesOfAPrologue() {
        let boundaries = (0...prologue.count).filter { InstructionDecoder.isBoundary(offset: $0, in: prologue) }
        XCTAssertEqual(boundaries, [0, 4, 5, 8])
        XCTAssertFalse(InstructionDecoder.isBoundary(offset: -1, in: prologue))
    }

    func testInstructionLengths() {
        XCTAssertEqual([0, 4, 5, 8].map { InstructionDecoder.instructionLength(at: $0, in: prologue) }, [4, 1, 3, 1])
        XCTAssertNil(InstructionDecoder.instructionLength(at: prologue.count, in: prologue))
        XCTAssertNil(InstructionDecoder.instructionLength(at: -1, in: prologue))
        // movabs rax, 0x1122334455667788
        let movabs: [UInt8] = [0x48, 0xB8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        XCTAssertEqual(InstructionDecoder.instructionLength(at: 0, in: movabs), 10)
        // The same instruction cut short does not decode.
        XCTAssertNil(InstructionDecoder.instructionLength(at: 0, in: Array(movabs.prefix(6))))
    }

    func testInvalidBytesStopDecoding() {
        // 0x06 (push es) does not exist in 64-bit mode: nothing after it is a known start.
        let code: [UInt8] = [0x90, 0x06, 0x90, 0x90]
        XCTAssertNil(InstructionDecoder.instructionLength(at: 1, in: code))
        XCTAssertTrue(InstructionDecoder.isBoundary(offset: 1, in: code))
        XCTAssertFalse(InstructionDecoder.isBoundary(offset: 2, in: code))
        XCTAssertFalse(InstructionDecoder.isBoundary(offset: 0, in: []))
    }

    func testEndbr64() {
        XCTAssertTrue(InstructionDecoder.startsWithEndbr64(prologue))
        XCTAssertTrue(InstructionDecoder.startsWithEndbr64([0xF3, 0x0F, 0x1E, 0xFA]))
        XCTAssertFalse(InstructionDecoder.startsWithEndbr64([0xF3, 0x0F, 0x1E, 0xFB]))
        XCTAssertFalse(InstructionDecoder.startsWithEndbr64([0xF3, 0x0F, 0x1E]))
        XCTAssertFalse(InstructionDecoder.startsWithEndbr64(Array(prologue.dropFirst(4))))
    }
}
