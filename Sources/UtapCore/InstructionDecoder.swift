import CZydis

/// x86-64 instruction boundaries, decoded with Zydis: a probe must go on the first byte of
/// an instruction, and the only way to know where instructions start is to decode from a
/// known start (a function's entry) forward.
public enum InstructionDecoder {
    /// Whether an instruction starts exactly at `offset` when `code` is decoded from its
    /// first byte; false when decoding fails before reaching `offset`.
    public static func isBoundary(offset: Int, in code: [UInt8]) -> Bool {
        var at = 0
        while at < offset, let length = instructionLength(at: at, in: code) {
            at += length
        }
        return at == offset && offset < code.count
    }

    /// `endbr64` (F3 0F 1E FA), the CET landing pad compilers put at function entries.
    public static func startsWithEndbr64(_ code: [UInt8]) -> Bool {
        code.starts(with: [0xF3, 0x0F, 0x1E, 0xFA])
    }

    /// Where an entry probe goes in a function whose whole code is `code`: past a leading
    /// endbr64, and past instructions that only set flags (`test` and `cmp` of registers
    /// and immediates, at most four) when they lead to an instruction the kernel emulates
    /// (a push of a register, a relative jump, call or conditional jump, a nop) and no
    /// jump of the function lands among them. Registers, stack and memory are then what
    /// they were at the entry, and a hit costs an emulation instead of a single-step (~20x
    /// less here: libc's `free` starts with `test %rdi,%rdi; je`).
    public static func entryOffset(in code: [UInt8]) -> Int {
        entryPlacement(in: code).offset
    }

    /// `entryOffset`, and whether the kernel emulates the instruction there (a hit costs
    /// well under a µs) or single-steps it (10-20 µs here, and a return probe's latency
    /// includes it).
    public static func entryPlacement(in code: [UInt8]) -> (offset: Int, emulated: Bool) {
        let start = startsWithEndbr64(code) ? 4 : 0
        var at = start
        var passed = 0
        while passed < 4, let instruction = decode(at: at, in: code), setsOnlyFlags(instruction) {
            at += Int(instruction.length)
            passed += 1
        }
        let emulated = decode(at: at, in: code).map(kernelEmulates) ?? false
        guard at > start, emulated, !hasJump(in: code, landingIn: (start + 1)...at) else {
            return (start, decode(at: start, in: code).map(kernelEmulates) ?? false)
        }
        return (at, true)
    }

    /// `test` or `cmp` without a memory operand: writes the flags and nothing else.
    private static func setsOnlyFlags(_ instruction: ZydisDecodedInstruction) -> Bool {
        guard instruction.mnemonic == ZYDIS_MNEMONIC_TEST || instruction.mnemonic == ZYDIS_MNEMONIC_CMP else { return false }
        return instruction.attributes & UInt64(ZYDIS_ATTRIB_HAS_MODRM) == 0 || instruction.raw.modrm.mod == 3
    }

    /// Instructions the kernel's x86 uprobes emulate rather than single-step out of line.
    private static func kernelEmulates(_ instruction: ZydisDecodedInstruction) -> Bool {
        let relative = instruction.raw.imm.0.is_relative != 0
        switch instruction.mnemonic {
        case ZYDIS_MNEMONIC_PUSH:
            // push %reg (50+r, REX.B allowed), no operand-size prefix.
            return instruction.attributes & UInt64(ZYDIS_ATTRIB_HAS_MODRM) == 0 && instruction.raw.imm.0.size == 0
                && instruction.attributes & UInt64(ZYDIS_ATTRIB_HAS_OPERANDSIZE) == 0
        case ZYDIS_MNEMONIC_JMP, ZYDIS_MNEMONIC_CALL:
            return relative
        case ZYDIS_MNEMONIC_NOP:
            return true
        case ZYDIS_MNEMONIC_JRCXZ, ZYDIS_MNEMONIC_JECXZ, ZYDIS_MNEMONIC_JCXZ,
             ZYDIS_MNEMONIC_LOOP, ZYDIS_MNEMONIC_LOOPE, ZYDIS_MNEMONIC_LOOPNE:
            return false
        default:
            return instruction.meta.category == ZYDIS_CATEGORY_COND_BR && relative
        }
    }

    /// Whether a jump of the function (or bytes that do not decode, or an indirect jump,
    /// whose targets are unknown) may land at an offset in `range`.
    private static func hasJump(in code: [UInt8], landingIn range: ClosedRange<Int>) -> Bool {
        var at = 0
        while at < code.count {
            guard let instruction = decode(at: at, in: code) else { return true }
            let next = at + Int(instruction.length)
            let category = instruction.meta.category
            if category == ZYDIS_CATEGORY_UNCOND_BR || category == ZYDIS_CATEGORY_COND_BR {
                guard instruction.raw.imm.0.is_relative != 0 else { return true }
                if range.contains(next + Int(instruction.raw.imm.0.value.s)) { return true }
            }
            at = next
        }
        return false
    }

    /// The length of the instruction starting at `offset`, or nil when the bytes there are
    /// not a complete valid instruction.
    public static func instructionLength(at offset: Int, in code: [UInt8]) -> Int? {
        decode(at: offset, in: code).map { Int($0.length) }
    }

    /// Offsets of every `ret` in a function's code, decoded from its first byte; nil when
    /// some bytes do not decode (the function cannot be read with certainty).
    public static func returnInstructions(in code: [UInt8]) -> [Int]? {
        var returns: [Int] = []
        var at = 0
        while at < code.count {
            guard let instruction = decode(at: at, in: code) else { return nil }
            if instruction.mnemonic == ZYDIS_MNEMONIC_RET { returns.append(at) }
            at += Int(instruction.length)
        }
        return returns
    }

    /// The decoded instruction at `offset` (prefixes, ModRM, displacement fields).
    static func decodedInstruction(at offset: Int, in code: [UInt8]) -> ZydisDecodedInstruction? {
        decode(at: offset, in: code)
    }

    private static func decode(at offset: Int, in code: [UInt8]) -> ZydisDecodedInstruction? {
        guard offset >= 0, offset < code.count else { return nil }
        var instruction = ZydisDecodedInstruction()
        let status = code.withUnsafeBytes { raw in
            withUnsafePointer(to: decoder) { decoder in
                ZydisDecoderDecodeInstruction(decoder, nil, raw.baseAddress! + offset,
                                              ZyanUSize(code.count - offset), &instruction)
            }
        }
        // ZYAN_SUCCESS is a macro Swift cannot import: failure codes have the top bit set.
        guard status & 0x8000_0000 == 0 else { return nil }
        return instruction
    }

    /// A 64-bit long-mode decoder; initialized once, read-only afterwards.
    private static let decoder: ZydisDecoder = {
        var decoder = ZydisDecoder()
        let status = ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64)
        precondition(status & 0x8000_0000 == 0, "ZydisDecoderInit failed")
        return decoder
    }()
}
