// Instruction analysis and relocation (InstructionAnalysis, InstructionDecoder over Zydis).
// Input: 8 bytes of ELF address, 8 bytes of out-of-line stub address (little-endian), then
// the code bytes. A planned step must be the same instruction, moved: same length, same
// bytes but for a rip-relative displacement, which must still reach the same address.
import CZydis
@testable import UtapCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInstruction(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard input.count > 16 else { return 0 }
    let address = input.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
    let stub = input.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
    let code = Array(input[16...])
    checkPlan(InstructionAnalysis.plan(code, at: address, stub: stub), code: code, address: address, stub: stub)
    checkReturns(in: code)
    return 0
}

private func checkPlan(_ plan: InstructionPlan, code: [UInt8], address: UInt64, stub: UInt64) {
    guard let length = InstructionDecoder.instructionLength(at: 0, in: code) else {
        guard case .refuse = plan else { preconditionFailure("planned bytes that do not decode") }
        return
    }
    let next = address &+ UInt64(length)
    switch plan {
    case .step(let step):
        checkRelocation(step.bytes, of: Array(code[..<length]), address: address, stub: stub)
    case .emulate(.skip(let skipped)):
        precondition(skipped == length, "skips \(skipped) bytes of a \(length)-byte instruction")
    case .emulate(.call(_, let returnAddress)):
        precondition(returnAddress == next, "call returns to the wrong address")
    case .emulate(.conditionalJump(_, _, let fallThrough)):
        precondition(fallThrough == next, "conditional jump falls through to the wrong address")
    case .emulate(.push(_, let after)), .emulate(.moveStackPointerToFramePointer(let after)),
         .emulate(.subtractFromStackPointer(_, let after)):
        precondition(after == next, "emulation resumes at the wrong address")
    case .emulate(.jump), .emulate(.return), .refuse:
        break
    }
}

/// `moved` is `original` run at `stub` instead of `address`.
private func checkRelocation(_ moved: [UInt8], of original: [UInt8], address: UInt64, stub: UInt64) {
    precondition(moved.count == original.count, "relocated to \(moved.count) bytes from \(original.count)")
    guard let before = InstructionDecoder.decodedInstruction(at: 0, in: original),
          let after = InstructionDecoder.decodedInstruction(at: 0, in: moved) else {
        preconditionFailure("the relocated instruction does not decode")
    }
    precondition(after.length == before.length && after.mnemonic == before.mnemonic, "relocation changed the instruction")
    let displacement = Int(before.raw.disp.offset)..<Int(before.raw.disp.offset) + Int(before.raw.disp.size / 8)
    for i in original.indices where !displacement.contains(i) {
        precondition(moved[i] == original[i], "relocation changed byte \(i), outside the displacement")
    }
    // Either unchanged, or rip-relative: both copies reach the same address
    // (rip + disp, rip being each copy's own next instruction).
    let reachedBefore = address &+ UInt64(bitPattern: before.raw.disp.value)
    let reachedAfter = stub &+ UInt64(bitPattern: after.raw.disp.value)
    precondition(moved == original || reachedBefore == reachedAfter, "the relocated operand reaches another address")
}

/// Every `ret` found is an instruction start, decoded as a `ret`.
private func checkReturns(in code: [UInt8]) {
    guard let returns = InstructionDecoder.returnInstructions(in: code) else { return }
    for (previous, next) in zip(returns, returns.dropFirst()) {
        precondition(previous < next, "ret offsets out of order")
    }
    for offset in returns {
        precondition(InstructionDecoder.isBoundary(offset: offset, in: code), "ret at \(offset) is not an instruction start")
        precondition(InstructionDecoder.decodedInstruction(at: offset, in: code)?.mnemonic == ZYDIS_MNEMONIC_RET,
                     "ret at \(offset) does not decode as ret")
    }
}
