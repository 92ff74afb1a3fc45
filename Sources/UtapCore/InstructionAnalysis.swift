import CZydis

/// An instruction the tracer runs itself instead of the CPU (one stop per hit).
public enum Emulation: Equatable, Sendable {
    /// nop, multi-byte nop, pause, endbr64: only rip moves.
    case skip(length: Int)
    case jump(target: UInt64)
    /// `condition` is the low nibble of the Jcc opcode (the x86 condition code).
    case conditionalJump(condition: UInt8, target: UInt64, fallThrough: UInt64)
    case call(target: UInt64, returnAddress: UInt64)
    case push(Register, next: UInt64)
    /// `mov %rsp,%rbp`
    case moveStackPointerToFramePointer(next: UInt64)
    /// `sub $imm,%rsp` (flags computed as the CPU would). The immediate as a 32-bit pattern
    /// that the CPU sign-extends to 64 bits (an imm8 is already sign-extended to 32 here:
    /// `48 83 ec 80` is 0xffffff80, i.e. rsp += 128).
    case subtractFromStackPointer(UInt32, next: UInt64)
    /// `ret` / `ret $imm16` (also `repz ret`, `bnd ret`): pops rip, then `extraPop` bytes.
    case `return`(extraPop: UInt16)
}

/// How an instruction stepped out of line is put back in its place afterwards.
public enum StepFixup: Equatable, Sendable {
    /// rip += original address − stub address.
    case instructionPointer
    /// Indirect call: also the pushed return address must be the original's.
    case call
    /// ret and indirect jmp: rip comes from the instruction itself.
    case none
}

/// An instruction copied into the out-of-line page and single-stepped there.
public struct OutOfLineStep: Equatable, Sendable {
    /// The bytes to put in the stub (a rip-relative displacement already rewritten for
    /// the stub's address).
    public var bytes: [UInt8]
    public var fixup: StepFixup
    /// `pushf` pushes the trap flag the single step set: clear it in the pushed word.
    public var clearsTrapFlag: Bool
    /// `rep` string instructions stop after each iteration with rip unchanged.
    public var repeats: Bool
}

/// What the ptrace engine does with the instruction under a breakpoint.
public enum InstructionPlan: Equatable, Sendable {
    case emulate(Emulation)
    case step(OutOfLineStep)
    /// Not safe to run out of line or emulate: the probe is refused at install time.
    case refuse(String)
}

/// Why a probe site cannot be trusted to a uprobe (see `InstructionAnalysis.uprobeProblem`).
public enum SiteProblem: Equatable, Sendable {
    /// VEX, EVEX or XOP: the kernel's uprobes mishandle it; ptrace steps it.
    case vector
    /// Refused by both backends, for this reason (a lock prefix, a system instruction).
    case refused(String)
}

/// Classifies the instruction a breakpoint displaces (ptrace-xol.md §2), decoding the
/// file's bytes with Zydis. Pure: no process is touched.
public enum InstructionAnalysis {
    /// What keeps the kernel's uprobes from the instruction `code` starts with, at ELF
    /// address `address`: the one check of the bpf backend, of globs and of `list -v`.
    public static func uprobeProblem(_ code: [UInt8], at address: UInt64) -> SiteProblem? {
        if InstructionDecoder.isVectorEncoded(at: 0, in: code) { return .vector }
        if case .refuse(let reason) = plan(code, at: address, stub: address) { return .refused(reason) }
        return nil
    }

    /// `code` starts at the instruction (at least its length), found at ELF address
    /// `address`; `stub` is where its out-of-line copy would run.
    public static func plan(_ code: [UInt8], at address: UInt64, stub: UInt64) -> InstructionPlan {
        guard let length = InstructionDecoder.instructionLength(at: 0, in: code) else {
            return .refuse("the bytes do not decode as an instruction")
        }
        if code[0] == 0xCC { return .refuse("the site already holds an int3") }
        if InstructionDecoder.isVectorEncoded(at: 0, in: code) {
            // VEX, EVEX or XOP (AVX and later): never a branch or a stack or flags
            // operation, so it runs out of line as it is, a rip-relative operand moved.
            // (Their first byte would read as a legacy opcode below: 62 is BOUND.)
            return stepPlan(code, length: length, address: address, stub: stub, opcode: code[0], second: nil,
                            modrmReg: nil, prefixes: [])
        }
        var i = 0
        var prefixes = Set<UInt8>()
        while i < length, [0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67].contains(code[i]) {
            prefixes.insert(code[i])
            i += 1
        }
        var rex: UInt8 = 0
        if i < length, (0x40...0x4F).contains(code[i]) {
            rex = code[i]
            i += 1
        }
        guard i < length else { return .refuse("prefixes without an opcode") }
        let opcode = code[i]
        let second: UInt8? = opcode == 0x0F && i + 1 < length ? code[i + 1] : nil
        let modrmReg: UInt8? = i + (second == nil ? 1 : 2) < length ? (code[i + (second == nil ? 1 : 2)] >> 3) & 7 : nil
        // Wrapping: the address comes from the file's symbols, which may be anything.
        let next = address &+ UInt64(length)

        if let reason = refusal(prefixes: prefixes, opcode: opcode, second: second, modrmReg: modrmReg) {
            return .refuse(reason)
        }
        if let emulation = emulation(code, length: length, start: i, rex: rex, prefixes: prefixes, opcode: opcode,
                                     second: second, next: next) {
            return .emulate(emulation)
        }
        return stepPlan(code, length: length, address: address, stub: stub, opcode: opcode, second: second,
                        modrmReg: modrmReg, prefixes: prefixes)
    }

    static func refusal(prefixes: Set<UInt8>, opcode: UInt8, second: UInt8?, modrmReg: UInt8?) -> String? {
        if prefixes.contains(0xF0) { return "lock prefix" }
        if !prefixes.isDisjoint(with: [0x26, 0x2E, 0x36, 0x3E]) { return "segment or notrack prefix" }
        let privilegedOrLegacy: Set<UInt8> = [0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F, 0x60, 0x61,
                                              0x62, 0x6C, 0x6D, 0x6E, 0x6F, 0x82, 0x9A, 0xCC, 0xCD, 0xCE, 0xCF, 0xD4, 0xD5,
                                              0xD6, 0xE4, 0xE5, 0xE6, 0xE7, 0xEA, 0xEC, 0xED, 0xEE, 0xEF, 0xF1, 0xF4, 0xFA, 0xFB]
        if let second {
            let refusedTwoByte: Set<UInt8> = [0x00, 0x01, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x30, 0x34, 0x35, 0x37, 0x78, 0x79, 0xAE]
            if refusedTwoByte.contains(second) { return "system instruction 0f \(hex(second))" }
        } else if privilegedOrLegacy.contains(opcode) {
            return "instruction \(hex(opcode)) is not run out of line"
        }
        if opcode == 0x8E && modrmReg == 2 { return "mov to %ss" }
        if prefixes.contains(0x66) && isBranch(opcode: opcode, second: second, modrmReg: modrmReg) {
            return "operand-size prefixed branch"
        }
        return nil
    }

    static func isBranch(opcode: UInt8, second: UInt8?, modrmReg: UInt8?) -> Bool {
        if let second { return (0x80...0x8F).contains(second) }
        if [0xE8, 0xE9, 0xEB, 0xC2, 0xC3].contains(opcode) || (0x70...0x7F).contains(opcode) { return true }
        return opcode == 0xFF && [2, 3, 4, 5].contains(modrmReg ?? 0)
    }

    static func emulation(_ code: [UInt8], length: Int, start i: Int, rex: UInt8, prefixes: Set<UInt8>,
                          opcode: UInt8, second: UInt8?, next: UInt64) -> Emulation? {
        func signed32(_ at: Int) -> Int64 {
            Int64(Int32(bitPattern: UInt32(code[at]) | UInt32(code[at + 1]) << 8 | UInt32(code[at + 2]) << 16 | UInt32(code[at + 3]) << 24))
        }
        func relative(_ displacement: Int64) -> UInt64 { UInt64(bitPattern: Int64(bitPattern: next) &+ displacement) }

        if InstructionDecoder.startsWithEndbr64(code) { return .skip(length: 4) }
        switch (opcode, second) {
        case (0x90, nil) where rex & 1 == 0: // nop and pause; 41 90 is xchg %eax,%r8d
            return .skip(length: length)
        case (0x0F, 0x1F): // multi-byte nop
            return .skip(length: length)
        case (0xEB, nil):
            return .jump(target: relative(Int64(Int8(bitPattern: code[i + 1]))))
        case (0xE9, nil):
            return .jump(target: relative(signed32(i + 1)))
        case (0x70...0x7F, nil):
            return .conditionalJump(condition: opcode & 0xF, target: relative(Int64(Int8(bitPattern: code[i + 1]))), fallThrough: next)
        case (0x0F, .some(let s)) where (0x80...0x8F).contains(s):
            return .conditionalJump(condition: s & 0xF, target: relative(signed32(i + 2)), fallThrough: next)
        case (0xE8, nil):
            return .call(target: relative(signed32(i + 1)), returnAddress: next)
        case (0xC3, nil) where prefixes.isSubset(of: [0xF2, 0xF3]):
            return .return(extraPop: 0)
        case (0xC2, nil) where prefixes.isSubset(of: [0xF2, 0xF3]):
            return .return(extraPop: UInt16(code[i + 1]) | UInt16(code[i + 2]) << 8)
        case (0x50...0x57, nil) where prefixes.isEmpty:
            let order: [Register] = rex & 1 == 0 ? [.rax, .rcx, .rdx, .rbx, .rsp, .rbp, .rsi, .rdi]
                                                 : [.r8, .r9, .r10, .r11, .r12, .r13, .r14, .r15]
            return .push(order[Int(opcode - 0x50)], next: next)
        default:
            break
        }
        let body = Array(code[i..<length])
        if rex == 0x48 && prefixes.isEmpty {
            if body == [0x89, 0xE5] || body == [0x8B, 0xEC] { return .moveStackPointerToFramePointer(next: next) }
            if body.count == 3, body[0] == 0x83, body[1] == 0xEC { return .subtractFromStackPointer(UInt32(bitPattern: Int32(Int8(bitPattern: body[2]))), next: next) }
            if body.count == 6, body[0] == 0x81, body[1] == 0xEC {
                return .subtractFromStackPointer(UInt32(body[2]) | UInt32(body[3]) << 8 | UInt32(body[4]) << 16 | UInt32(body[5]) << 24, next: next)
            }
        }
        return nil
    }

    static func stepPlan(_ code: [UInt8], length: Int, address: UInt64, stub: UInt64, opcode: UInt8, second: UInt8?,
                         modrmReg: UInt8?, prefixes: Set<UInt8>) -> InstructionPlan {
        guard let instruction = InstructionDecoder.decodedInstruction(at: 0, in: code) else {
            return .refuse("the bytes do not decode as an instruction")
        }
        // 64-bit mode: ModRM with mod 00 and r/m 101 addresses rip + disp32.
        let ripRelative = instruction.attributes & UInt64(ZYDIS_ATTRIB_HAS_MODRM) != 0
            && instruction.raw.modrm.mod == 0 && instruction.raw.modrm.rm == 5 && instruction.raw.disp.size == 32
        // Zydis marks both rip-relative operands and relative branches; the branches not
        // emulated (loop, jrcxz, ...) would jump relative to the stub.
        if instruction.attributes & UInt64(ZYDIS_ATTRIB_IS_RELATIVE) != 0 && !ripRelative {
            return .refuse("relative branch that cannot run out of line")
        }
        var bytes = Array(code[0..<length])
        if ripRelative {
            // Modulo 2^64, as the CPU adds rip and disp: a plain + traps on far-apart addresses.
            let shifted = instruction.raw.disp.value &+ Int64(bitPattern: address &- stub)
            guard let displacement = Int32(exactly: shifted) else {
                return .refuse("rip-relative operand out of reach of the out-of-line page")
            }
            let at = Int(instruction.raw.disp.offset)
            withUnsafeBytes(of: displacement.littleEndian) { bytes.replaceSubrange(at..<(at + 4), with: $0) }
        }
        let fixup: StepFixup
        if second == nil && [0xC3, 0xC2, 0xCB, 0xCA].contains(opcode) {
            fixup = .none
        } else if second == nil && opcode == 0xFF && [4, 5].contains(modrmReg ?? 0) {
            fixup = .none
        } else if second == nil && opcode == 0xFF && [2, 3].contains(modrmReg ?? 0) {
            fixup = .call
        } else {
            fixup = .instructionPointer
        }
        let repeats = (prefixes.contains(0xF3) || prefixes.contains(0xF2))
            && second == nil && [0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF].contains(opcode)
        return .step(OutOfLineStep(bytes: bytes, fixup: fixup, clearsTrapFlag: second == nil && opcode == 0x9C,
                                   repeats: repeats))
    }

    static func hex(_ byte: UInt8) -> String {
        (byte < 16 ? "0" : "") + String(byte, radix: 16)
    }
}
