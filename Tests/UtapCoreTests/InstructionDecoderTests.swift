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

    func testEntryOffsetPassesOnlyWhatLeavesTheEntryStateAndLandsOnAnEmulatedInstruction() {
        let endbr: [UInt8] = [0xF3, 0x0F, 0x1E, 0xFA]
        let testRdi: [UInt8] = [0x48, 0x85, 0xFF]      // test %rdi,%rdi
        let je: [UInt8] = [0x74, 0x02]                  // je +2
        let tail: [UInt8] = [0x31, 0xC0, 0xC3, 0xC3]    // xor %eax,%eax; ret; ret
        func offset(_ code: [UInt8]) -> Int { InstructionDecoder.entryOffset(in: code) }
        XCTAssertEqual(offset(prologue), 4, "endbr64; push: past endbr64, as before")
        XCTAssertEqual(offset(testRdi + je + tail), 3, "libc free's start: test; je")
        XCTAssertEqual(offset(endbr + testRdi + je + tail), 7)
        XCTAssertEqual(offset([0x83, 0xFF, 0x01] + [0x7E, 0x02] + tail), 3, "cmp $1,%edi; jle")
        XCTAssertEqual(offset(testRdi + [0x48, 0x39, 0xF7] + [0x0F, 0x84, 0, 0, 0, 0] + tail), 6, "test; cmp; je rel32")
        XCTAssertEqual(offset(testRdi + [0x55] + tail), 3, "test; push %rbp")
        XCTAssertEqual(offset(testRdi + [0xE8, 0, 0, 0, 0] + tail), 3, "test; call")
        XCTAssertEqual(offset(testRdi + [0x0F, 0x1F, 0x00] + tail), 3, "test; nopl")
        // Not passed: no gain, a changed state, or a jump that may land on the probe.
        XCTAssertEqual(offset(testRdi + [0x48, 0x89, 0xF8] + tail), 0, "test; mov: the mov is single-stepped anyway")
        XCTAssertEqual(offset(endbr + testRdi + [0x48, 0x89, 0xF8] + tail), 0, "nothing emulated past endbr64: on it")
        XCTAssertEqual(offset([0x80, 0x3F, 0x00] + je + tail), 0, "cmpb $0,(%rdi) reads memory")
        XCTAssertEqual(offset([0x48, 0x31, 0xFF] + je + tail), 0, "xor writes a register")
        XCTAssertEqual(offset(testRdi + [0xE3, 0x02] + tail), 0, "jrcxz is single-stepped")
        XCTAssertEqual(offset(testRdi + [0x66, 0x55] + tail), 0, "push with an operand-size prefix is single-stepped")
        XCTAssertEqual(offset(testRdi + je + [0xEB, 0xFC] + tail), 0, "jmp back to the je")
        XCTAssertEqual(offset(testRdi + je + [0x75, 0xFC] + tail), 0, "jne back to the je")
        XCTAssertEqual(offset(testRdi + je + [0xEB, 0xF9] + tail), 3, "a jump to the entry itself is an entry")
        XCTAssertEqual(offset(testRdi + je + [0xFF, 0xE0] + tail), 0, "jmp *%rax: where it lands is unknown")
        XCTAssertEqual(offset(testRdi + je + [0x06] + tail), 0, "bytes that do not decode")
        XCTAssertEqual(offset(je + tail), 0, "already emulated")
        XCTAssertEqual(offset(testRdi + testRdi + testRdi + testRdi + je + tail), 12)
        XCTAssertEqual(offset(testRdi + testRdi + testRdi + testRdi + testRdi + je + tail), 0, "at most four tests")
    }

    /// Go's stack check (tests/targets/gostack.go has it live): passed in a Go program,
    /// onto the first instruction of a call whose stack is big enough.
    func testEntryPassesGoStackCheckInGoPrograms() {
        let cmpRsp: [UInt8] = [0x49, 0x3B, 0x66, 0x10]                           // cmp 0x10(%r14),%rsp
        let leaR12: [UInt8] = [0x4C, 0x8D, 0xA4, 0x24, 0x60, 0xFF, 0xFF, 0xFF]   // lea -0xa0(%rsp),%r12
        let cmpR12: [UInt8] = [0x4D, 0x3B, 0x66, 0x10]                           // cmp 0x10(%r14),%r12
        let subRsp: [UInt8] = [0x48, 0x83, 0xEC, 0x18]                           // sub $0x18,%rsp
        let jbeToGrow: [UInt8] = [0x76, 0x05]                                    // jbe to the block below
        // The block that grows the stack: call runtime.morestack_noctxt, jmp to the start.
        func grows(back distance: Int) -> [UInt8] { [0xE8, 0, 0, 0, 0, 0xEB, UInt8(bitPattern: Int8(-distance - 7))] }
        func placement(_ code: [UInt8], go: Bool = true) -> String {
            let p = InstructionDecoder.entryPlacement(in: code, goStackCheck: go)
            return "+\(p.offset) \(p.emulated ? "emulated" : "stepped")"
        }
        let work = cmpRsp + jbeToGrow + subRsp + ret
        XCTAssertEqual(placement(work + grows(back: work.count)), "+6 stepped", "main.work")
        let growBody = leaR12 + cmpR12 + jbeToGrow + subRsp + ret
        XCTAssertEqual(placement(growBody + grows(back: growBody.count)), "+14 stepped", "main.grow: a large frame")
        XCTAssertEqual(placement(cmpRsp + [0x76, 0x06] + [0x55] + [0, 0, 0, 0] + ret + grows(back: 12)), "+6 emulated", "then a push")
        // Not passed.
        XCTAssertEqual(placement(work + grows(back: work.count), go: false), "+0 stepped", "not a Go program")
        XCTAssertEqual(placement(cmpRsp + [0x76, 0xFA] + subRsp + ret), "+0 stepped", "jbe backwards")
        XCTAssertEqual(placement(cmpRsp + [0x76, 0x40] + subRsp + ret), "+0 stepped", "jbe out of the function")
        XCTAssertEqual(placement([0x49, 0x3B, 0x67, 0x10] + jbeToGrow + subRsp + ret + grows(back: 10)), "+0 stepped",
                       "cmp 0x10(%r15),%rsp: not Go's g register")
        XCTAssertEqual(placement(leaR12 + cmpRsp + jbeToGrow + subRsp + ret + grows(back: 18)), "+0 stepped",
                       "lea to r12, then rsp compared")
        let loop = cmpRsp + jbeToGrow + subRsp + [0xEB, 0xFA]                     // jmp back onto the sub
        XCTAssertEqual(placement(loop + grows(back: loop.count)), "+0 stepped", "a jump lands past the check")
    }

    // Vector instructions (tests/targets/vector.c has them live).
    let vmovdToXmm: [UInt8] = [0xC5, 0xF9, 0x6E, 0xC7]            // vmovd %edi,%xmm0 (VEX)
    let vpbroadcastb: [UInt8] = [0xC4, 0xE2, 0x7D, 0x78, 0xC0]     // vpbroadcastb %xmm0,%ymm0
    let evexBroadcast: [UInt8] = [0x62, 0xE2, 0x7D, 0x28, 0x7A, 0xC7]  // vpbroadcastb %edi,%ymm16 (EVEX)
    let movEdiEax: [UInt8] = [0x89, 0xF8]
    let ret: [UInt8] = [0xC3]

    func testVectorEncodings() {
        for (code, vector) in [(vmovdToXmm, true), (vpbroadcastb, true), (evexBroadcast, true),
                               ([0x66, 0x0F, 0x6E, 0xC7], false),  // movd %edi,%xmm0 (SSE, legacy)
                               (movEdiEax, false), (prologue, false)] {
            XCTAssertEqual(InstructionDecoder.isVectorEncoded(at: 0, in: code), vector, "\(code)")
        }
    }

    func testEntryPassesVectorRegisterWritesOnlyWithoutEndbr64() {
        func placement(_ code: [UInt8]) -> String {
            let p = InstructionDecoder.entryPlacement(in: code)
            return "+\(p.offset) \(p.emulated ? "emulated" : "stepped")"
        }
        let endbr: [UInt8] = [0xF3, 0x0F, 0x1E, 0xFA]
        XCTAssertEqual(placement(evexBroadcast + movEdiEax + ret), "+6 stepped", "glibc's __memset_evex_unaligned_erms")
        XCTAssertEqual(placement(vmovdToXmm + vpbroadcastb + movEdiEax + ret), "+9 stepped", "__rawmemchr_avx2")
        XCTAssertEqual(placement(vmovdToXmm + [0x55] + ret), "+4 emulated", "then a push")
        XCTAssertEqual(placement(endbr + vmovdToXmm + movEdiEax + ret), "+0 stepped", "endbr64 first: on it")
        XCTAssertEqual(placement(endbr + [0x55] + ret), "+4 emulated")
        XCTAssertEqual(placement(Array([[UInt8]](repeating: vmovdToXmm, count: 4).joined()) + movEdiEax + ret), "+16 stepped")
        XCTAssertEqual(InstructionDecoder.entryOffset(in: Array([[UInt8]](repeating: vmovdToXmm, count: 5).joined()) + movEdiEax + ret), 0,
                       "at most four")
        // Not passed: the vector instruction is the site (the bpf backend refuses it).
        XCTAssertEqual(InstructionDecoder.entryOffset(in: [0xC5, 0xFE, 0x6F, 0x07] + movEdiEax + ret), 0,
                       "vmovdqu (%rdi),%ymm0 reads memory")
        XCTAssertEqual(InstructionDecoder.entryOffset(in: [0xC5, 0xFD, 0xD7, 0xC0] + movEdiEax + ret), 0,
                       "vpmovmskb %ymm0,%eax writes a general register")
        XCTAssertEqual(InstructionDecoder.entryOffset(in: [0xC4, 0xE2, 0x7D, 0x17, 0xC0] + movEdiEax + ret), 0,
                       "vptest %ymm0,%ymm0 writes the flags")
        XCTAssertEqual(InstructionDecoder.entryOffset(in: vmovdToXmm + [0xC5, 0xFD, 0xD7, 0xC0] + ret), 0,
                       "the first other instruction is a vector one too")
        XCTAssertEqual(InstructionDecoder.entryOffset(in: vmovdToXmm + movEdiEax + [0xEB, 0xFC] + ret), 0,
                       "jmp back to the mov: a probe there would fire for more than entries")
    }
}
