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
    /// Integer argument register N (System V: rdi, rsi, rdx, rcx, r8, r9).
    case arg(Int)
    /// The return value (rax); only on return probes.
    case ret

    public var description: String {
        switch self {
        case .arg(let n): return "arg\(n)"
        case .ret: return "ret"
        }
    }
}

/// `[NAME '='] SOURCE [':' TYPE]`.
public struct FieldSpec: Equatable, Sendable {
    public var name: String
    public var source: FieldSource
    public var type: FieldType

    public init(name: String, source: FieldSource, type: FieldType) {
        self.name = name
        self.source = source
        self.type = type
    }
}

/// Where in the target a probe goes, as written.
public enum ProbeLocation: Equatable, Sendable {
    case symbol(String)
    case glob(String)
    case symbolOffset(String, UInt64)
    /// An ELF virtual address of the target file.
    case address(UInt64)
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
            throw .usage("probe '\(head)': USDT probes are not supported yet")
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

    static func parseField(_ word: String, probe: String, kind: ProbeKind) throws(UtapError) -> FieldSpec {
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
        } else if rest.hasPrefix("arg"), let n = Int(rest.dropFirst(3)), (0...5).contains(n), rest.count == 4 {
            source = .arg(n)
        } else {
            throw .usage("probe '\(probe)': unknown field source '\(rest)' in '\(word)'", hint: "sources are arg0..arg5 and ret")
        }
        if source == .ret && kind == .entry {
            throw .usage("probe '\(probe)': 'ret' is only available on return probes", hint: "add %return to the probe: '\(probe)%return ret'")
        }
        if case .arg = source, kind == .return {
            throw .usage("probe '\(probe)': '\(source)' is not available on a return probe (argument registers are overwritten by then)", hint: "record it on the entry probe '\(probe.dropLast("%return".count)) \(word)'")
        }
        let type = try typeText.map { (t: Substring) throws(UtapError) -> FieldType in try parseType(t, probe: probe) } ?? .s64
        return FieldSpec(name: name ?? source.description, source: source, type: type)
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
