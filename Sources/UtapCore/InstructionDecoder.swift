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
