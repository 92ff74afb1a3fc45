/// How a field's raw 64-bit value is interpreted and printed.
public enum FieldType: Equatable, Sendable {
    case s8, s16, s32, s64, u8, u16, u32, u64
    /// `x`: unsigned, printed as hex.
    case hex
    case pointer
    case bool
    /// `str` / `str[N]`: a NUL-terminated user string read through the pointer; at most
    /// `maxLength` bytes of it are kept (the NUL not counted).
    case string(maxLength: Int)

    /// `str` without a length reads this many bytes (like bpftrace's default).
    public static let defaultStringLength = 64
    /// `str[N]` accepts N up to this (the ABI's UTAP_STR_MAX less the NUL).
    public static let maxStringLength = 255

    public var isString: Bool {
        if case .string = self { return true }
        return false
    }
}

/// Where a field's value is taken from.
public enum FieldSource: Equatable, Sendable, CustomStringConvertible {
    /// Integer argument register N (System V: rdi, rsi, rdx, rcx, r8, r9); for a USDT
    /// probe, its argument N.
    case arg(Int)
    /// The return value (rax); only on return probes.
    case ret
    /// A resolved location (a USDT argument's register, memory operand or constant).
    case location(ValueLocation)

    public var description: String {
        switch self {
        case .arg(let n): return "arg\(n)"
        case .ret: return "ret"
        case .location(let l): return "\(l)"
        }
    }
}

/// A register of struct pt_regs (x86-64), by its 8-byte slot in the kernel's layout.
public enum Register: Int, CaseIterable, Sendable {
    case r15 = 0, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, origRax, rip, cs, eflags, rsp, ss

    /// The 64-bit register behind an AT&T register name of any width (`%eax`, `%r12d`, `%dil`).
    public init?(gasName: String) {
        let name = gasName.hasPrefix("%") ? String(gasName.dropFirst()) : gasName
        let legacy: [String: Register] = [
            "rax": .rax, "eax": .rax, "ax": .rax, "al": .rax, "rbx": .rbx, "ebx": .rbx, "bx": .rbx, "bl": .rbx,
            "rcx": .rcx, "ecx": .rcx, "cx": .rcx, "cl": .rcx, "rdx": .rdx, "edx": .rdx, "dx": .rdx, "dl": .rdx,
            "rsi": .rsi, "esi": .rsi, "si": .rsi, "sil": .rsi, "rdi": .rdi, "edi": .rdi, "di": .rdi, "dil": .rdi,
            "rbp": .rbp, "ebp": .rbp, "bp": .rbp, "bpl": .rbp, "rsp": .rsp, "esp": .rsp, "sp": .rsp, "spl": .rsp,
            "rip": .rip,
        ]
        if let r = legacy[name] {
            self = r
            return
        }
        // r8..r15 with an optional d/w/b width suffix.
        var digits = Substring(name.dropFirst())
        if let last = digits.last, "dwb".contains(last) { digits = digits.dropLast() }
        let numbered: [Int: Register] = [8: .r8, 9: .r9, 10: .r10, 11: .r11, 12: .r12, 13: .r13, 14: .r14, 15: .r15]
        guard name.hasPrefix("r"), let n = Int(digits), let r = numbered[n] else { return nil }
        self = r
    }
}

/// Where a value lives at a probe site, beyond the calling convention's argN/ret.
public enum ValueLocation: Equatable, Sendable, CustomStringConvertible {
    case register(Register)
    /// `size` bytes at register + displacement.
    case memory(base: Register, displacement: Int64, size: Int)
    case constant(Int64)

    public var description: String {
        switch self {
        case .register(let r): return "%\(r)"
        case .memory(let base, let displacement, _): return "\(displacement)(%\(base))"
        case .constant(let value): return "$\(value)"
        }
    }
}

/// `[NAME '='] SOURCE [':' TYPE]`.
public struct FieldSpec: Equatable, Sendable {
    public var name: String
    public var source: FieldSource
    public var type: FieldType
    /// The probe text gave no TYPE (a USDT argument then takes its own size and sign).
    public var typeIsDefault: Bool

    public init(name: String, source: FieldSource, type: FieldType, typeIsDefault: Bool = false) {
        self.name = name
        self.source = source
        self.type = type
        self.typeIsDefault = typeIsDefault
    }
}

/// Where in the target a probe goes, as written.
public enum ProbeLocation: Equatable, Sendable {
    case symbol(String)
    case glob(String)
    case symbolOffset(String, UInt64)
    /// An ELF virtual address of the target file.
    case address(UInt64)
    /// A USDT probe (`usdt:TARGET:PROVIDER:NAME`).
    case usdt(provider: String, name: String)
}

/// A parsed probe, before anything is resolved against files or processes.
public struct ProbeSpec: Equatable, Sendable {
    /// The probe text without its fields: how events name the probe.
    public var name: String
    /// ELF path or library name; nil means the COMMAND's executable.
    public var target: String?
    public var location: ProbeLocation
    public var kind: ProbeKind
    public var fields: [FieldSpec]

    public init(name: String, target: String?, location: ProbeLocation, kind: ProbeKind,
                fields: [FieldSpec]) {
        self.name = name
        self.target = target
        self.location = location
        self.kind = kind
        self.fields = fields
    }
}

/// Parses the probe grammar of DESIGN.md. Every failure is a usage error that quotes the
/// offending part.
public enum ProbeParser {
    public static func parse(_ text: String) throws(UtapError) -> ProbeSpec {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let head = words.first else {
            throw .usage("probe '\(text)': empty probe", hint: "write a probe as [TARGET:]SYMBOL[%return] [FIELD...], e.g. 'libc:malloc size=arg0:u64'")
        }
        if head.hasPrefix("usdt:") {
            return try parseUSDT(head, fields: Array(words.dropFirst()))
        }
        var location = head
        var kind = ProbeKind.entry
        if let percent = location.firstIndex(of: "%") {
            // From the first '%': a second suffix ("foo%return%return") is not part of the symbol.
            guard location[percent...] == "%return" else {
                throw .usage("probe '\(head)': unknown suffix '\(location[percent...])'", hint: "the only suffix is %return")
            }
            location = String(location[..<percent])
            kind = .return
        }
        var target: String?
        if let colon = firstSingleColon(in: location) {
            target = String(location[..<colon])
            location = String(location[location.index(after: colon)...])
            if target!.isEmpty {
                throw .usage("probe '\(head)': empty target before ':'")
            }
        }
        let parsedLocation = try parseLocation(location, probe: head)
        if kind == .return, case .symbolOffset(_, let offset) = parsedLocation, offset != 0 {
            throw .usage("probe '\(head)': a return probe must be on a function's start, not at an offset")
        }
        var fields: [FieldSpec] = []
        for word in words.dropFirst() {
            let field = try parseField(word, probe: head, kind: kind)
            if fields.contains(where: { $0.name == field.name }) {
                throw .usage("probe '\(head)': field name '\(field.name)' used twice", hint: "name fields apart, e.g. a=arg0 b=arg0:x")
            }
            fields.append(field)
        }
        if fields.count > 6 {
            throw .usage("probe '\(head)': at most 6 fields per probe, got \(fields.count)")
        }
        return ProbeSpec(name: head, target: target, location: parsedLocation, kind: kind, fields: fields)
    }

    /// `usdt:TARGET:PROVIDER:NAME`, fields naming the probe's arguments arg0..arg11.
    static func parseUSDT(_ head: String, fields words: [String]) throws(UtapError) -> ProbeSpec {
        let parts = head.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, parts.dropFirst().allSatisfy({ !$0.isEmpty }) else {
            throw .usage("probe '\(head)': not usdt:TARGET:PROVIDER:NAME", hint: "e.g. usdt:/usr/bin/python3.11:python:function__entry")
        }
        var fields: [FieldSpec] = []
        for word in words {
            let field = try parseField(word, probe: head, kind: .entry, maxArgument: 11)
            if fields.contains(where: { $0.name == field.name }) {
                throw .usage("probe '\(head)': field name '\(field.name)' used twice", hint: "name fields apart, e.g. a=arg0 b=arg0:x")
            }
            fields.append(field)
        }
        if fields.count > 6 {
            throw .usage("probe '\(head)': at most 6 fields per probe, got \(fields.count)")
        }
        return ProbeSpec(name: head, target: parts[1], location: .usdt(provider: parts[2], name: parts[3]),
                         kind: .entry, fields: fields)
    }

    /// The first ':' that is not half of a C++ scope operator `::`.
    static func firstSingleColon(in s: String) -> String.Index? {
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == ":" {
                let next = s.index(after: i)
                if next < s.endIndex && s[next] == ":" {
                    i = s.index(after: next)
                    continue
                }
                return i
            }
            i = s.index(after: i)
        }
        return nil
    }

    static func parseLocation(_ text: String, probe: String) throws(UtapError) -> ProbeLocation {
        if text.isEmpty {
            throw .usage("probe '\(probe)': missing function name", hint: "write TARGET:SYMBOL, e.g. libc:malloc")
        }
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            guard let address = unsigned(text.dropFirst(2), radix: 16) else {
                throw .usage("probe '\(probe)': '\(text)' is not a hex address")
            }
            return .address(address)
        }
        if text.contains(where: { "*?[".contains($0) }) {
            return .glob(text)
        }
        if let plus = text.lastIndex(of: "+") {
            let symbol = String(text[..<plus])
            let offsetText = text[text.index(after: plus)...]
            guard !symbol.isEmpty, let offset = parseInteger(offsetText) else {
                throw .usage("probe '\(probe)': '\(text)' is not SYMBOL+OFFSET", hint: "the offset is decimal or 0x-prefixed hex, e.g. main+0x10")
            }
            return .symbolOffset(symbol, offset)
        }
        return .symbol(text)
    }

    static func parseInteger<S: StringProtocol>(_ text: S) -> UInt64? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            return unsigned(text.dropFirst(2), radix: 16)
        }
        return unsigned(text, radix: 10)
    }

    /// `UInt64(_:radix:)` without the leading '+' or '-' it accepts ("0x+10", "foo+-0").
    static func unsigned<S: StringProtocol>(_ text: S, radix: Int) -> UInt64? {
        guard let first = text.first, first != "+", first != "-" else { return nil }
        return UInt64(text, radix: radix)
    }

    static func parseField(_ word: String, probe: String, kind: ProbeKind, maxArgument: Int = 5) throws(UtapError) -> FieldSpec {
        var rest = Substring(word)
        var name: String?
        if let eq = rest.firstIndex(of: "=") {
            let candidate = rest[..<eq]
            guard isIdentifier(candidate) else {
                throw .usage("probe '\(probe)': field '\(word)': name '\(candidate)' is not an identifier",
                             hint: "write NAME=SOURCE with NAME made of letters, digits and '_', e.g. size=arg0")
            }
            name = String(candidate)
            rest = rest[rest.index(after: eq)...]
        }
        var typeText: Substring?
        if let colon = rest.firstIndex(of: ":") {
            typeText = rest[rest.index(after: colon)...]
            rest = rest[..<colon]
        }
        let source: FieldSource
        if rest == "ret" {
            source = .ret
        } else if rest.hasPrefix("arg"), let n = unsigned(rest.dropFirst(3), radix: 10), n <= maxArgument,
                  rest.count == (n < 10 ? 4 : 5) {
            source = .arg(Int(n))
        } else {
            throw .usage("probe '\(probe)': unknown field source '\(rest)' in '\(word)'", hint: "sources are arg0..arg\(maxArgument) and ret")
        }
        if source == .ret && kind == .entry {
            throw .usage("probe '\(probe)': 'ret' is only available on return probes", hint: "add %return to the probe: '\(probe)%return ret'")
        }
        if case .arg = source, kind == .return {
            throw .usage("probe '\(probe)': '\(source)' is not available on a return probe (argument registers are overwritten by then)", hint: "record it on the entry probe '\(probe.dropLast("%return".count)) \(word)'")
        }
        let type = try typeText.map { (t: Substring) throws(UtapError) -> FieldType in try parseType(t, probe: probe) } ?? .s64
        return FieldSpec(name: name ?? source.description, source: source, type: type, typeIsDefault: typeText == nil)
    }

    static func isIdentifier(_ s: Substring) -> Bool {
        guard let first = s.first, first == "_" || first.isLetter else { return false }
        return s.allSatisfy { $0 == "_" || $0.isLetter || $0.isNumber }
    }

    static func parseType(_ text: Substring, probe: String) throws(UtapError) -> FieldType {
        switch text {
        case "s8": return .s8
        case "s16": return .s16
        case "s32": return .s32
        case "s64": return .s64
        case "u8": return .u8
        case "u16": return .u16
        case "u32": return .u32
        case "u64": return .u64
        case "x": return .hex
        case "ptr": return .pointer
        case "bool": return .bool
        case "str": return .string(maxLength: FieldType.defaultStringLength)
        default:
            if text.hasPrefix("str[") && text.hasSuffix("]") {
                let inner = text.dropFirst(4).dropLast()
                if let n = unsigned(inner, radix: 10), (1...UInt64(FieldType.maxStringLength)).contains(n) {
                    return .string(maxLength: Int(n))
                }
                throw .usage("probe '\(probe)': string length '\(inner)' must be 1..\(FieldType.maxStringLength)")
            }
            throw .usage("probe '\(probe)': unknown type '\(text)'", hint: "types are s8 s16 s32 s64 u8 u16 u32 u64 x ptr bool str str[N]")
        }
    }
}
