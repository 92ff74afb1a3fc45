import CZydis
import Glibc

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

    /// Where an entry probe goes in a function whose whole code is `code`: on an
    /// instruction the kernel emulates when one is reached through instructions that leave
    /// nothing a probe reads changed, else on the first byte.
    ///
    /// - Past a leading endbr64, and past instructions that only set flags (`test` and
    ///   `cmp` of registers and immediates, at most four), when they lead to an instruction
    ///   the kernel emulates (a push of a register, a relative jump, call or conditional
    ///   jump, a nop) and no jump of the function lands among them. Registers, stack and
    ///   memory are then what they were at the entry, and a hit costs an emulation instead
    ///   of a single-step (~20x less here: libc's `free` starts with `test %rdi,%rdi; je`).
    /// - Otherwise on the first byte, endbr64 included: the kernel steps it as cheaply as
    ///   any other, and it is never one the kernel mishandles (below).
    /// - A function without endbr64 that opens with vector instructions (VEX, EVEX or
    ///   XOP-encoded: glibc's AVX2 and AVX-512 string functions) gets its probe past those
    ///   of them that only write vector or mask registers from registers, on the first
    ///   other instruction: the kernel's uprobes decode a vector instruction as the legacy
    ///   one-byte opcode it carries, so they refuse some, never fire on others, and
    ///   emulate others as jumps (a `vpbroadcastb` run as `jp` corrupts every memset).
    /// - In a Go program (`goStackCheck`), past the stack-bound check Go functions open
    ///   with (`pastGoStackCheck`), else a call that grows its stack is entered twice.
    public static func entryOffset(in code: [UInt8], goStackCheck: Bool = false) -> Int {
        entryPlacement(in: code, goStackCheck: goStackCheck).offset
    }

    /// `entryOffset`, and whether the kernel emulates the instruction there (a hit costs
    /// well under a µs) or single-steps it (10-20 µs here, and a return probe's latency
    /// includes it).
    public static func entryPlacement(in code: [UInt8], goStackCheck: Bool = false) -> (offset: Int, emulated: Bool) {
        if goStackCheck, let past = pastGoStackCheck(in: code) { return (past, kernelEmulates(at: past, in: code)) }
        let start = startsWithEndbr64(code) ? 4 : 0
        var at = start
        var passed = 0
        while passed < 4, let instruction = decode(at: at, in: code), setsOnlyFlags(instruction) {
            at += Int(instruction.length)
            passed += 1
        }
        if at > start, kernelEmulates(at: at, in: code), !hasJump(in: code, landingIn: (start + 1)...at) {
            return (at, true)
        }
        if kernelEmulates(at: start, in: code) { return (start, true) }
        if start == 0, let past = pastVectorRegisterWrites(in: code) { return (past, kernelEmulates(at: past, in: code)) }
        return (0, false)
    }

    /// Go functions open with a check of the stack's bound: `cmp 0x10(%r14),%rsp` (in a
    /// large frame `lea -N(%rsp),%r12` first, and %r12 compared), then a `jbe` to a block
    /// at the function's end that grows the stack, moving it, and jumps back to the first
    /// instruction. A probe there fires twice for a call that grows the stack. Past the
    /// check it fires once a call, with the stack and registers the call entered with
    /// (%r12 aside: scratch in Go's ABI). The offset past the check, or nil when the
    /// function does not open with one or a jump of the function lands inside it.
    private static func pastGoStackCheck(in code: [UInt8]) -> Int? {
        func isRegister(_ operand: ZydisDecodedOperand, _ register: ZydisRegister) -> Bool {
            operand.type == ZYDIS_OPERAND_TYPE_REGISTER && operand.reg.value == register
        }
        func isMemory(_ operand: ZydisDecodedOperand, base: ZydisRegister) -> Bool {
            operand.type == ZYDIS_OPERAND_TYPE_MEMORY && operand.mem.base == base && operand.mem.index == ZYDIS_REGISTER_NONE
        }
        var at = 0
        var compared = ZYDIS_REGISTER_RSP
        if let (lea, operands) = decodeFull(at: 0, in: code), lea.mnemonic == ZYDIS_MNEMONIC_LEA, operands.count >= 2,
           isRegister(operands[0], ZYDIS_REGISTER_R12), isMemory(operands[1], base: ZYDIS_REGISTER_RSP) {
            at = Int(lea.length)
            compared = ZYDIS_REGISTER_R12
        }
        guard let (cmp, operands) = decodeFull(at: at, in: code), cmp.mnemonic == ZYDIS_MNEMONIC_CMP, operands.count >= 2,
              isRegister(operands[0], compared), isMemory(operands[1], base: ZYDIS_REGISTER_R14) else { return nil }
        at += Int(cmp.length)
        guard let jump = decode(at: at, in: code), jump.mnemonic == ZYDIS_MNEMONIC_JBE || jump.mnemonic == ZYDIS_MNEMONIC_JB,
              jump.raw.imm.0.is_relative != 0 else { return nil }
        let past = at + Int(jump.length)
        let target = past + Int(jump.raw.imm.0.value.s)
        guard target > past, target < code.count, past < code.count, !hasJump(in: code, landingIn: 1...past) else { return nil }
        return past
    }

    /// Whether the instruction at `offset` is VEX, EVEX, MVEX or XOP-encoded (AVX and
    /// later vector extensions): the kernel's x86 uprobes cannot be trusted with one (see
    /// `entryOffset`), so the bpf backend refuses to probe it.
    public static func isVectorEncoded(at offset: Int, in code: [UInt8]) -> Bool {
        decode(at: offset, in: code).map(isVectorEncoded) ?? false
    }

    private static func isVectorEncoded(_ instruction: ZydisDecodedInstruction) -> Bool {
        [ZYDIS_INSTRUCTION_ENCODING_VEX, ZYDIS_INSTRUCTION_ENCODING_EVEX, ZYDIS_INSTRUCTION_ENCODING_MVEX,
         ZYDIS_INSTRUCTION_ENCODING_XOP].contains(instruction.encoding)
    }

    /// The offset of the first instruction after leading vector instructions (at most
    /// four) that write vector or mask registers and nothing else, from registers only:
    /// no memory operand, no flags, no general-purpose register written. Nil when the
    /// first instruction is not one, the first other one is vector-encoded too, or a jump
    /// of the function lands among them.
    private static func pastVectorRegisterWrites(in code: [UInt8]) -> Int? {
        var at = 0, passed = 0
        while at < code.count, isVectorEncoded(at: at, in: code) {
            guard passed < 4, let length = vectorRegisterWriteLength(at: at, in: code) else { return nil }
            at += length
            passed += 1
        }
        guard at > 0, at < code.count, !hasJump(in: code, landingIn: 1...at) else { return nil }
        return at
    }

    /// The length of the instruction at `offset` when it is a vector instruction that
    /// writes only vector or mask registers, from registers and immediates.
    private static func vectorRegisterWriteLength(at offset: Int, in code: [UInt8]) -> Int? {
        guard let (instruction, operands) = decodeFull(at: offset, in: code), isVectorEncoded(instruction),
              instruction.cpu_flags == nil || instruction.cpu_flags.pointee.modified == 0 else { return nil }
        for operand in operands {
            switch operand.type {
            case ZYDIS_OPERAND_TYPE_REGISTER:
                let written = operand.actions & ZydisOperandActions(ZYDIS_OPERAND_ACTION_MASK_WRITE.rawValue) != 0
                let vector = [ZYDIS_REGCLASS_XMM, ZYDIS_REGCLASS_YMM, ZYDIS_REGCLASS_ZMM, ZYDIS_REGCLASS_MASK]
                    .contains(ZydisRegisterGetClass(operand.reg.value))
                if written && !vector { return nil }
            case ZYDIS_OPERAND_TYPE_IMMEDIATE:
                continue
            default:
                return nil  // memory (loads, stores, gathers) or anything else
            }
        }
        return Int(instruction.length)
    }

    /// `test` or `cmp` without a memory operand: writes the flags and nothing else.
    private static func setsOnlyFlags(_ instruction: ZydisDecodedInstruction) -> Bool {
        guard instruction.mnemonic == ZYDIS_MNEMONIC_TEST || instruction.mnemonic == ZYDIS_MNEMONIC_CMP else { return false }
        return instruction.attributes & UInt64(ZYDIS_ATTRIB_HAS_MODRM) == 0 || instruction.raw.modrm.mod == 3
    }

    private static func kernelEmulates(at offset: Int, in code: [UInt8]) -> Bool {
        decode(at: offset, in: code).map(kernelEmulates) ?? false
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

    /// The first 16 bytes (fewer at the end of the file) at `offset` in the file at
    /// `path`: enough for any instruction, for checking a probe site before probing it.
    public static func code(atFileOffset offset: UInt64, in path: String) throws(UtapError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .runtime("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 16)
        let got = pread(fd, &bytes, 16, off_t(offset))
        guard got > 0 else { throw .runtime("\(path): cannot read the code at file offset 0x\(String(offset, radix: 16))") }
        return Array(bytes.prefix(got))
    }

    /// The decoded instruction at `offset` (prefixes, ModRM, displacement fields).
    static func decodedInstruction(at offset: Int, in code: [UInt8]) -> ZydisDecodedInstruction? {
        decode(at: offset, in: code)
    }

    /// The instruction at `offset` with its operands (destination first).
    private static func decodeFull(at offset: Int, in code: [UInt8]) -> (ZydisDecodedInstruction, [ZydisDecodedOperand])? {
        guard offset >= 0, offset < code.count else { return nil }
        var instruction = ZydisDecodedInstruction()
        var operands = [ZydisDecodedOperand](repeating: ZydisDecodedOperand(), count: Int(ZYDIS_MAX_OPERAND_COUNT))
        let status = code.withUnsafeBytes { raw in
            withUnsafePointer(to: decoder) { decoder in
                ZydisDecoderDecodeFull(decoder, raw.baseAddress! + offset, ZyanUSize(code.count - offset),
                                       &instruction, &operands)
            }
        }
        guard status & 0x8000_0000 == 0 else { return nil }
        return (instruction, Array(operands.prefix(Int(instruction.operand_count))))
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
