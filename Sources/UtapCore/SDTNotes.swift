import CLibbpf
import Glibc

/// One argument of a USDT probe: `[-]SIZE@OPERAND` in the note.
public struct USDTArgument: Equatable, Sendable {
    /// Bytes: 1, 2, 4 or 8.
    public var size: Int
    public var isSigned: Bool
    public var location: ValueLocation

    public init(size: Int, isSigned: Bool, location: ValueLocation) {
        self.size = size
        self.isSigned = isSigned
        self.location = location
    }

    /// The field type a value of this size and sign prints as.
    public var fieldType: FieldType {
        switch (size, isSigned) {
        case (1, true): return .s8
        case (1, false): return .u8
        case (2, true): return .s16
        case (2, false): return .u16
        case (4, true): return .s32
        case (4, false): return .u32
        case (_, true): return .s64
        default: return .u64
        }
    }

    /// Parses one argument spec, e.g. `-4@%edi`, `8@-16(%rbp)`, `4@$5`, `8@%rax`.
    /// Forms this tracer cannot read (rip-relative symbols, index registers) give nil.
    public static func parse(_ text: Substring) -> USDTArgument? {
        // magnitude, not abs: abs(Int.min) traps, and the note's text is the file's.
        guard let at = text.firstIndex(of: "@"), let size = Int(text[..<at]), [1, 2, 4, 8].contains(size.magnitude) else {
            return nil
        }
        let operand = text[text.index(after: at)...]
        let location: ValueLocation
        if operand.hasPrefix("%") {
            guard let register = Register(gasName: String(operand)) else { return nil }
            location = .register(register)
        } else if operand.hasPrefix("$") {
            guard let value = Int64(operand.dropFirst()) else { return nil }
            location = .constant(value)
        } else if let open = operand.firstIndex(of: "("), operand.hasSuffix(")") {
            let displacementText = operand[..<open]
            let inside = operand[operand.index(after: open)..<operand.index(before: operand.endIndex)]
            guard !inside.contains(","), let base = Register(gasName: String(inside)), base != .rip,
                  let displacement = displacementText.isEmpty ? 0 : Int64(displacementText) else { return nil }
            location = .memory(base: base, displacement: displacement, size: abs(size))
        } else {
            return nil
        }
        return USDTArgument(size: abs(size), isSigned: size < 0, location: location)
    }
}

/// A USDT (SystemTap SDT) probe site from a file's `.note.stapsdt`.
public struct SDTProbe: Equatable, Sendable {
    public var provider: String
    public var name: String
    /// ELF virtual address of the site (the `nop`).
    public var address: UInt64
    /// ELF virtual address of the semaphore (a 2-byte counter), 0 when unguarded.
    public var semaphore: UInt64
    /// The argument specs as written in the note.
    public var argumentText: String
    /// Parsed arguments; nil entries are forms utap cannot read.
    public var arguments: [USDTArgument?]
}

/// Reads `.note.stapsdt` of an ELF file.
public enum SDTNotes {
    /// The probes of `path`, in note order. Addresses are corrected by the difference
    /// between `.stapsdt.base`'s actual address and the one recorded in each note
    /// (prelinked files).
    public static func read(_ path: String) throws(UtapError) -> [SDTProbe] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .usage("'\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        _ = elf_version(UInt32(EV_CURRENT))
        guard let elf = elf_begin(fd, ELF_C_READ_MMAP, nil) else {
            throw .usage("'\(path)': cannot read ELF: \(String(cString: elf_errmsg(-1)))")
        }
        defer { elf_end(elf) }
        var stringsIndex = 0
        guard elf_getshdrstrndx(elf, &stringsIndex) == 0 else { return [] }
        var baseAddress: UInt64?
        var notes: [UnsafeMutablePointer<Elf_Data>] = []
        var section = elf_nextscn(elf, nil)
        while let scn = section {
            section = elf_nextscn(elf, scn)
            var shdr = GElf_Shdr()
            guard gelf_getshdr(scn, &shdr) != nil, let name = elf_strptr(elf, stringsIndex, Int(shdr.sh_name)) else { continue }
            let sectionName = String(cString: name)
            if sectionName == ".stapsdt.base" {
                baseAddress = shdr.sh_addr
            } else if sectionName == ".note.stapsdt", shdr.sh_type == UInt32(SHT_NOTE), let data = elf_getdata(scn, nil) {
                notes.append(data)
            }
        }
        return notes.flatMap { probes(in: $0, base: baseAddress) }
    }

    static func probes(in data: UnsafeMutablePointer<Elf_Data>, base: UInt64?) -> [SDTProbe] {
        var result: [SDTProbe] = []
        // NT_STAPSDT (3), owner "stapsdt"; desc: pc, base, semaphore, then 3 strings.
        for desc in elfNotes(in: data, owner: "stapsdt", type: 3) where desc.count >= 24 + 3 {
            let pc = desc.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
            let recordedBase = desc.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let semaphore = desc.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
            let strings = desc[24...].split(separator: 0, omittingEmptySubsequences: false).map {
                String(decoding: $0, as: UTF8.self)
            }
            guard strings.count >= 3 else { continue }
            let shift = base.map { $0 &- recordedBase } ?? 0
            let argumentText = strings[2]
            result.append(SDTProbe(
                provider: strings[0], name: strings[1], address: pc &+ shift,
                semaphore: semaphore == 0 ? 0 : semaphore &+ shift, argumentText: argumentText,
                arguments: argumentText.split(separator: " ").map { USDTArgument.parse($0) }))
        }
        return result
    }
}
