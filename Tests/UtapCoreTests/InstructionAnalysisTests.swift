import XCTest
@testable import UtapCore

/// The displaced-instruction classes of ptrace-xol.md §2, on hand-assembled bytes.
final class InstructionAnalysisTests: XCTestCase {
    let a: UInt64 = 0x401000
    let stub: UInt64 = 0x7f00_0000_1000

    private func plan(_ bytes: [UInt8]) -> InstructionPlan {
        InstructionAnalysis.plan(bytes + [0x90, 0x90, 0x90, 0x90], at: a, stub: stub)
    }

    func testEmulatedClasses() {
        XCTAssertEqual(plan([0xF3, 0x0F, 0x1E, 0xFA]), .emulate(.skip(length: 4)), "endbr64")
        XCTAssertEqual(plan([0x90]), .emulate(.skip(length: 1)))
        XCTAssertEqual(plan([0xF3, 0x90]), .emulate(.skip(length: 2)), "pause")
        XCTAssertEqual(plan([0x0F, 0x1F, 0x44, 0x00, 0x00]), .emulate(.skip(length: 5)), "nop5")
        XCTAssertEqual(plan([0x66, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00]), .emulate(.skip(length: 9)))
        XCTAssertEqual(plan([0xEB, 0xFE]), .emulate(.jump(target: a)), "jmp to itself")
        XCTAssertEqual(plan([0xE9, 0x10, 0x00, 0x00, 0x00]), .emulate(.jump(target: a + 5 + 0x10)))
        XCTAssertEqual(plan([0x74, 0x05]), .emulate(.conditionalJump(condition: 4, target: a + 7, fallThrough: a + 2)))
        XCTAssertEqual(plan([0x0F, 0x8F, 0x00, 0x01, 0x00, 0x00]),
                       .emulate(.conditionalJump(condition: 0xF, target: a + 6 + 0x100, fallThrough: a + 6)))
        XCTAssertEqual(plan([0xE8, 0xFB, 0xFF, 0xFF, 0xFF]), .emulate(.call(target: a, returnAddress: a + 5)))
        XCTAssertEqual(plan([0x55]), .emulate(.push(.rbp, next: a + 1)))
        XCTAssertEqual(plan([0x41, 0x57]), .emulate(.push(.r15, next: a + 2)))
        XCTAssertEqual(plan([0x48, 0x89, 0xE5]), .emulate(.moveStackPointerToFramePointer(next: a + 3)))
        XCTAssertEqual(plan([0x48, 0x8B, 0xEC]), .emulate(.moveStackPointerToFramePointer(next: a + 3)))
        XCTAssertEqual(plan([0x48, 0x83, 0xEC, 0x18]), .emulate(.subtractFromStackPointer(0x18, next: a + 4)))
        XCTAssertEqual(plan([0x48, 0x81, 0xEC, 0x00, 0x10, 0x00, 0x00]), .emulate(.subtractFromStackPointer(0x1000, next: a + 7)))
        // imm8 is sign-extended: 48 83 ec 80 is sub $-128,%rsp.
        XCTAssertEqual(plan([0x48, 0x83, 0xEC, 0x80]), .emulate(.subtractFromStackPointer(0xFFFF_FF80, next: a + 4)))
    }

    func testSteppedClassesAndTheirFixups() {
        // xchg %eax,%r8d is not a nop.
        XCTAssertEqual(plan([0x41, 0x90]), .step(OutOfLineStep(bytes: [0x41, 0x90], fixup: .instructionPointer, clearsTrapFlag: false, repeats: false)))
        XCTAssertEqual(plan([0xC3]), .emulate(.return(extraPop: 0)))
        XCTAssertEqual(plan([0xF3, 0xC3]), .emulate(.return(extraPop: 0)))
        XCTAssertEqual(plan([0xC2, 0x10, 0x00]), .emulate(.return(extraPop: 16)))
        XCTAssertEqual(plan([0xCB]), .step(OutOfLineStep(bytes: [0xCB], fixup: .none, clearsTrapFlag: false, repeats: false)))
        XCTAssertEqual(plan([0xFF, 0xE0]), .step(OutOfLineStep(bytes: [0xFF, 0xE0], fixup: .none, clearsTrapFlag: false, repeats: false)), "jmp *%rax")
        XCTAssertEqual(plan([0xFF, 0xD0]), .step(OutOfLineStep(bytes: [0xFF, 0xD0], fixup: .call, clearsTrapFlag: false, repeats: false)), "call *%rax")
        XCTAssertEqual(plan([0x9C]), .step(OutOfLineStep(bytes: [0x9C], fixup: .instructionPointer, clearsTrapFlag: true, repeats: false)), "pushf")
        XCTAssertEqual(plan([0xF3, 0xA4]), .step(OutOfLineStep(bytes: [0xF3, 0xA4], fixup: .instructionPointer, clearsTrapFlag: false, repeats: true)), "rep movsb")
        XCTAssertEqual(plan([0x64, 0x48, 0x8B, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00]),
                       .step(OutOfLineStep(bytes: [0x64, 0x48, 0x8B, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00], fixup: .instructionPointer,
                                           clearsTrapFlag: false, repeats: false)), "mov %fs:0x28,%rax (stack protector)")
    }

    func testRipRelativeDisplacementIsRewrittenForTheStub() {
        // mov 0x10(%rip),%rax at a, stepped at a stub 0x1000 bytes after it.
        let near = a + 0x1000
        let moved = InstructionAnalysis.plan([0x48, 0x8B, 0x05, 0x10, 0x00, 0x00, 0x00], at: a, stub: near)
        // The operand stays a + 7 + 0x10 = near + 7 + disp', so disp' = 0x10 - 0x1000.
        let disp = Int32(0x10 - 0x1000)
        let expected: [UInt8] = [0x48, 0x8B, 0x05] + withUnsafeBytes(of: disp.littleEndian) { Array($0) }
        XCTAssertEqual(moved, .step(OutOfLineStep(bytes: expected, fixup: .instructionPointer, clearsTrapFlag: false, repeats: false)))
        // The same for vector instructions, whose first byte would read as a legacy opcode
        // (62 is BOUND): vmovdqu32 0x10(%rip),%ymm18 (EVEX) and vmovdqu 0x10(%rip),%ymm2 (VEX).
        for prefix in [[0x62, 0xE1, 0x7E, 0x28, 0x6F, 0x15], [0xC5, 0xFE, 0x6F, 0x15]] as [[UInt8]] {
            XCTAssertEqual(InstructionAnalysis.plan(prefix + [0x10, 0x00, 0x00, 0x00], at: a, stub: near),
                           .step(OutOfLineStep(bytes: prefix + withUnsafeBytes(of: disp.littleEndian) { Array($0) },
                                               fixup: .instructionPointer, clearsTrapFlag: false, repeats: false)))
        }
        // vpbroadcastb %edi,%ymm16 (EVEX opcode 7a, which the kernel took for jp) runs as is.
        let broadcast: [UInt8] = [0x62, 0xE2, 0x7D, 0x28, 0x7A, 0xC7]
        XCTAssertEqual(plan(broadcast), .step(OutOfLineStep(bytes: broadcast, fixup: .instructionPointer, clearsTrapFlag: false, repeats: false)))
        // lea 0x0(%rip),%rdi with the stub more than 2 GiB away cannot be rewritten.
        XCTAssertEqual(InstructionAnalysis.plan([0x48, 0x8D, 0x3D, 0, 0, 0, 0], at: a, stub: stub),
                       .refuse("rip-relative operand out of reach of the out-of-line page"))
    }

    func testRefusals() {
        for (bytes, reason) in [([UInt8]([0xF0, 0x48, 0x0F, 0xB1, 0x0A]), "lock prefix"),
                                ([0x3E, 0xFF, 0xE0], "segment or notrack prefix"),
                                ([0xCC], "the site already holds an int3"),
                                ([0x0F, 0x05], "system instruction 0f 05"),
                                ([0xF4], "instruction f4 is not run out of line"),
                                ([0x8E, 0xD0], "mov to %ss"),
                                ([0x66, 0xE9, 0x00, 0x00], "operand-size prefixed branch"),
                                ([0xE2, 0xFE], "relative branch that cannot run out of line"),
                                ([0x0F, 0xFF], "the bytes do not decode as an instruction")] {
            XCTAssertEqual(plan(bytes), .refuse(reason), "\(bytes)")
        }
    }
}

/// Every instruction of every function in this machine's libc gets a plan, and a stepped
/// one keeps its length (the analysis reads file bytes other people control).
final class InstructionAnalysisOnLibcTests: XCTestCase {
    func testEveryInstructionOfLibc() throws {
        let image = try ELFImage.open("/lib/x86_64-linux-gnu/libc.so.6")
        var counts = (emulated: 0, stepped: 0, refused: 0)
        for function in image.functions where function.size > 0 && function.size < 1 << 16 {
            guard let code = image.bytes(atVirtualAddress: function.address, count: Int(function.size)) else { continue }
            var at = 0
            while at < code.count, let length = InstructionDecoder.instructionLength(at: at, in: code) {
                let window = Array(code[at..<min(code.count, at + 16)])
                let address = function.address + UInt64(at)
                switch InstructionAnalysis.plan(window, at: address, stub: address + 0x10_0000) {
                case .emulate: counts.emulated += 1
                case .step(let step):
                    XCTAssertEqual(step.bytes.count, length, "0x\(String(address, radix: 16))")
                    counts.stepped += 1
                case .refuse: counts.refused += 1
                }
                at += length
            }
        }
        XCTAssertGreaterThan(counts.emulated, 10_000, "\(counts)")
        XCTAssertGreaterThan(counts.stepped, counts.emulated, "\(counts)")
    }
}
