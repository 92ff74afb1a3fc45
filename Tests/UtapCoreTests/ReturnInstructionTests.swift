import XCTest
@testable import UtapCore

final class ReturnInstructionTests: XCTestCase {
    func testEveryRetIsFoundByDecodingFromTheStart() {
        // push %rbp; mov %rsp,%rbp; test %edi,%edi; je +2; pop %rbp; ret; pop %rbp; ret $8
        let code: [UInt8] = [0x55, 0x48, 0x89, 0xE5, 0x85, 0xFF, 0x74, 0x02, 0x5D, 0xC3, 0x5D, 0xC2, 0x08, 0x00]
        XCTAssertEqual(InstructionDecoder.returnInstructions(in: code), [9, 11])
        // A C3 byte inside an instruction (mov $0xc3,%eax) is not a ret.
        XCTAssertEqual(InstructionDecoder.returnInstructions(in: [0xB8, 0xC3, 0x00, 0x00, 0x00, 0xC3]), [5])
        XCTAssertNil(InstructionDecoder.returnInstructions(in: [0x55, 0x0F]), "truncated code is refused")
        XCTAssertEqual(InstructionDecoder.returnInstructions(in: [0x55, 0x5D]), [])
    }
}
