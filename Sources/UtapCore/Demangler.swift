import Glibc

// The C++ runtime's demangler (libstdc++, linked by Package.swift) and the Swift runtime's
// (libswiftCore, which every Swift program links). Both return a malloc'd string. They take
// and return only pointers and integers, which Swift's and C's calling conventions pass
// alike, so @_silgen_name declares them without a C module.
@_silgen_name("__cxa_demangle")
private func cxaDemangle(_ mangled: UnsafePointer<CChar>, _ buffer: UnsafeMutablePointer<CChar>?,
                         _ length: UnsafeMutablePointer<Int>?, _ status: UnsafeMutablePointer<Int32>?)
    -> UnsafeMutablePointer<CChar>?

@_silgen_name("swift_demangle")
private func swiftDemangle(_ mangled: UnsafePointer<CChar>, _ length: Int,
                           _ buffer: UnsafeMutablePointer<CChar>?, _ bufferSize: UnsafeMutablePointer<Int>?,
                           _ flags: UInt32) -> UnsafeMutablePointer<CChar>?

/// Turns mangled symbol names into the names programmers write: C++ (Itanium ABI, through
/// the C++ runtime), Rust (legacy and v0, decoded here) and Swift (through the Swift
/// runtime). Symbol names come from the files being traced, so anything malformed,
/// oversized or unknown yields nil (the caller keeps the raw name); nothing traps.
public enum Demangler {
    /// Which mangling a name used.
    public enum Scheme: Equatable, Sendable {
        case itanium, rustLegacy, rustV0, swift
    }

    /// Longer names are left alone: no real symbol comes close, and the demanglers'
    /// work (and output) grows with their input.
    static let maxInputLength = 16 * 1024
    /// Backreferences can make a short name expand exponentially; past this, give up.
    static let maxOutputLength = 64 * 1024

    /// The demangled form of `name`, or nil when it is not mangled or cannot be decoded.
    public static func demangle(_ name: String) -> String? {
        self.name(name)?.text
    }

    /// The demangled form of `name` with the scheme that decoded it and the shorter names
    /// it also answers to, or nil when it is not mangled or cannot be decoded.
    public static func name(_ name: String) -> DemangledName? {
        let bytes = name.utf8
        guard bytes.count >= 3, bytes.count <= maxInputLength, !bytes.contains(0) else { return nil }
        if name.hasPrefix("_R") {
            return RustV0Decoder.decode(name).map { DemangledName(scheme: .rustV0, text: $0) }
        }
        if name.hasPrefix("_ZN"), let text = RustLegacyDecoder.decode(name) {
            return DemangledName(scheme: .rustLegacy, text: text)
        }
        if name.hasPrefix("_Z") {
            return itanium(name).map { DemangledName(scheme: .itanium, text: $0) }
        }
        if name.hasPrefix("$s") || name.hasPrefix("$S") || name.hasPrefix("$e") || name.hasPrefix("_T0") {
            return swift(name).map { DemangledName(scheme: .swift, text: $0) }
        }
        return nil
    }

    static func itanium(_ name: String) -> String? {
        var status: Int32 = -1
        guard let result = cxaDemangle(name, nil, nil, &status) else { return nil }
        defer { free(result) }
        guard status == 0, strlen(result) <= maxOutputLength else { return nil }
        return String(cString: result)
    }

    static func swift(_ name: String) -> String? {
        let result = name.withCString { swiftDemangle($0, strlen($0), nil, nil, 0) }
        guard let result else { return nil }
        defer { free(result) }
        guard strlen(result) <= maxOutputLength else { return nil }
        let text = String(cString: result)
        return text == name ? nil : text
    }
}

/// A demangled symbol name and the shorter names it also answers to when a probe names a
/// function: without the parameter list, return type or template arguments (C++), without
/// the signature (Swift), without a generic instantiation or an inherent impl's `<>`
/// (Rust v0).
public struct DemangledName: Equatable, Sendable {
    public var scheme: Demangler.Scheme
    /// The full demangled name, e.g. `ns::Class::method(int) const`.
    public var text: String
    /// Shorter names, most specific first, e.g. `ns::Class::method`; never `text` itself.
    public var keys: [String]

    public init(scheme: Demangler.Scheme, text: String) {
        self.scheme = scheme
        self.text = text
        let keys: [String]
        switch scheme {
        case .itanium: keys = NameKeys.itanium(text)
        case .swift: keys = NameKeys.swift(text)
        case .rustV0, .rustLegacy: keys = NameKeys.rust(text)
        }
        // At most four keys: a linear check beats hashing them into a set.
        var unique: [String] = []
        for key in keys where !key.isEmpty && key != text && !unique.contains(key) {
            unique.append(key)
        }
        self.keys = unique
    }

    /// Whether the shell glob `pattern` matches the full name or one of its keys. A C++
    /// template instance's full name starts with its return type, which is not its name:
    /// `app::*` must not take `app::Shape** std::copy<…>(…)`, so only the keys without
    /// the return type are matched then.
    public func matches(glob pattern: String) -> Bool {
        let names = scheme == .itanium ? ([text] + keys).filter { !NameKeys.startsWithReturnType($0) } : [text] + keys
        return names.contains { fnmatch(pattern, $0, 0) == 0 }
    }
}

/// The functions of one file with their demangled names, for lookups by the names
/// programmers write. Built once per file, on demand: libjvm's 45,000 mangled functions
/// take about 0.2 s.
public struct DemangledFunctions: Sendable {
    /// A function and its demangled name.
    public struct Entry: Equatable, Sendable {
        public var symbol: ELFSymbol
        public var name: DemangledName
    }

    /// Every function whose name demangles, in the order of `functions`.
    public let entries: [Entry]
    /// Full names and keys without spaces (a probe is one shell word, so `f(char const*)`
    /// is written `f(charconst*)`) to indexes into `entries`.
    private let byKey: [String: [Int]]

    public init(_ functions: [ELFSymbol]) {
        var entries: [Entry] = []
        var byKey: [String: [Int]] = [:]
        for symbol in functions {
            guard let name = Demangler.name(symbol.name) else { continue }
            for key in Set(([name.text] + name.keys).map(Self.compact)) {
                byKey[key, default: []].append(entries.count)
            }
            entries.append(Entry(symbol: symbol, name: name))
        }
        self.entries = entries
        self.byKey = byKey
    }

    /// Functions whose demangled name, or one of its keys, is `name` (spaces ignored).
    public func functions(named name: String) -> [Entry] {
        (byKey[Self.compact(name)] ?? []).map { entries[$0] }
    }

    /// Functions whose demangled name, or one of its keys, matches the shell glob.
    public func functions(matching pattern: String) -> [Entry] {
        entries.filter { $0.name.matches(glob: pattern) }
    }

    static func compact(_ text: String) -> String {
        // On UTF-8: a space is never part of a multi-byte sequence, and iterating
        // Characters cost more than demangling.
        let space = UInt8(ascii: " ")
        guard text.utf8.contains(space) else { return text }
        return String(decoding: text.utf8.filter { $0 != space }, as: UTF8.self)
    }
}

/// The shorter names of demangled names. Heuristic by nature (the demangled text is all
/// there is): a key that cannot be found safely is left out.
///
/// Works on the text's UTF-8 bytes: every delimiter it looks for is ASCII, which never
/// occurs inside a multi-byte sequence, so cuts at them keep the text well-formed. (On
/// `[Character]`, with a dictionary of brackets, this was most of the time it took to
/// look up a name in a large C++ library: 0.5 s of libjvm's 0.8 s.)
enum NameKeys {
    typealias Bytes = ArraySlice<UInt8>

    /// Entities that are not the function itself but something about it.
    private static let itaniumSpecial = [
        "non-virtual thunk to ", "virtual thunk to ", "covariant return thunk to ",
        "transaction clone for ", "TLS init function for ", "TLS wrapper function for ",
        "guard variable for ", "reference temporary ", "vtable for ", "typeinfo ",
        "construction vtable for ", "VTT for ",
    ]

    /// `void ns::f<int>(int) const` -> `void ns::f<int>`, `ns::f<int>(int) const`,
    /// `ns::f<int>`, `ns::f`.
    /// Clones (`[clone .cold]`, `.isra.0`, …) are other code: they keep their full name only.
    static func itanium(_ text: String) -> [String] {
        let bytes = Bytes(text.utf8)
        if contains(" [clone ", in: bytes) || itaniumSpecial.contains(where: { bytes.starts(with: $0.utf8) }) {
            return []
        }
        guard let base = withoutParameterList(bytes) else { return [] }
        var keys = [base]
        guard base.last == ascii(">") else { return keys.map(string) }
        let name = withoutReturnType(base)
        if name.count != base.count {
            keys.append(name + bytes[(bytes.startIndex + base.count)...])
        }
        keys.append(name)
        if let plain = withoutTemplateArguments(name) { keys.append(plain) }
        return keys.map(string)
    }

    /// `main.Counter.bump(by: Swift.Int) -> Swift.Int` -> `main.Counter.bump`;
    /// `static main.Counter.make() -> main.Counter` -> `main.Counter.make`;
    /// `main.twice<A where A: Swift.Numeric>(A) -> A` -> `main.twice<…>`, `main.twice`;
    /// `main.Counter.value.getter : Swift.Int` -> `main.Counter.value.getter`.
    /// Specializations, thunks, closures and the like (text with words before the name)
    /// get no key.
    static func swift(_ text: String) -> [String] {
        var chars = Bytes(text.utf8)
        if chars.starts(with: "static ".utf8) { chars = chars.dropFirst(7) }
        var brackets = Brackets()
        var end: Int?
        for i in chars.indices {
            let c = chars[i]
            if brackets.isEmpty && (c == ascii("(") || c == ascii(" ")) {
                end = i
                break
            }
            brackets.track(chars, i)
        }
        guard let end, end > chars.startIndex else { return [] }
        guard chars[end] == ascii("(") || chars[end...].starts(with: " : ".utf8) else { return [] }
        let base = chars[..<end]
        var keys = [base]
        if let plain = withoutTemplateArguments(base) { keys.append(plain) }
        return keys.map(string)
    }

    /// `<crate::Type>::method` -> `crate::Type::method` (an inherent impl: Rust users write
    /// the path); `crate::f::<u32>` -> `crate::f`.
    static func rust(_ text: String) -> [String] {
        var keys: [Bytes] = []
        var chars = Bytes(text.utf8)
        if chars.first == ascii("<"), let close = matchingClose(of: chars.startIndex, in: chars),
           chars[(close + 1)...].starts(with: "::".utf8) {
            let inner = chars[(chars.startIndex + 1)..<close]
            if !containsAtTopLevel(" as ", inner) {
                chars = Bytes(inner + chars[(close + 1)...])
                keys.append(chars)
            }
        }
        if chars.last == ascii(">"), let open = matchingOpen(ofLastIn: chars),
           open - chars.startIndex >= 2, chars[open - 2] == ascii(":"), chars[open - 1] == ascii(":") {
            keys.append(chars[..<(open - 2)])
        }
        return keys.map(string)
    }

    /// `ns::A::f(int, char) const &` -> `ns::A::f`; nil when `text` is no function.
    static func withoutParameterList(_ text: Bytes) -> Bytes? {
        var end = text
        var stripped = true
        while stripped {
            stripped = false
            for qualifier in [" const", " volatile", " restrict", " &&", " &", " noexcept", " transaction_safe"]
            where end.reversed().starts(with: qualifier.utf8.reversed()) {
                end = end.dropLast(qualifier.utf8.count)
                stripped = true
            }
        }
        guard end.last == ascii(")"), let open = matchingOpen(ofLastIn: end), open > end.startIndex else { return nil }
        let name = trimmedRight(end[..<open])
        return name.isEmpty ? nil : name
    }

    /// Whether `text` is a template function instance's name led by its return type (a
    /// clone's ` [clone .isra.0]` suffix aside).
    static func startsWithReturnType(_ text: String) -> Bool {
        var bytes = Bytes(text.utf8)
        let clone = Array(" [clone ".utf8)
        if let at = bytes.indices.first(where: { bytes[$0...].starts(with: clone) }) { bytes = bytes[..<at] }
        return withoutReturnType(bytes).count != bytes.count
    }

    /// `std::vector<int> ns::make<int>` -> `ns::make<int>`: template function instances
    /// carry their return type. Cut at the last top-level space before any `operator`.
    static func withoutReturnType(_ text: Bytes) -> Bytes {
        var brackets = Brackets()
        var lastSpace: Int?
        for i in text.indices {
            if brackets.isEmpty {
                if text[i] == ascii(" ") { lastSpace = i }
                if text[i...].starts(with: "operator".utf8),
                   i == text.startIndex || text[i - 1] == ascii(" ") || text[i - 1] == ascii(":") {
                    break
                }
            }
            brackets.track(text, i)
        }
        guard let lastSpace else { return text }
        let name = text[(lastSpace + 1)...]
        // `f() const::g<int>` is a local entity, not a return type followed by a name.
        if name.isEmpty || name.starts(with: "const".utf8) || name.starts(with: "volatile".utf8)
            || name.first == ascii("&") {
            return text
        }
        return name
    }

    /// `ns::f<int>` -> `ns::f`; nil when the name ends in no template arguments
    /// (`operator>`, `operator->`, a conversion `operator std::vector<int>`).
    static func withoutTemplateArguments(_ text: Bytes) -> Bytes? {
        guard text.last == ascii(">"),
              !["operator>", "operator>>", "operator->"].contains(where: { text.reversed().starts(with: $0.utf8.reversed()) }),
              !text.starts(with: "operator ".utf8), !contains("::operator ", in: text),
              let open = matchingOpen(ofLastIn: text) else { return nil }
        let name = trimmedRight(text[..<open])
        guard !name.isEmpty, name.last != ascii(":") else { return nil }
        return name
    }

    // MARK: - Bytes

    @inline(__always)
    private static func ascii(_ c: Unicode.Scalar) -> UInt8 { UInt8(ascii: c) }

    private static func string(_ bytes: Bytes) -> String { String(decoding: bytes, as: UTF8.self) }

    private static func trimmedRight(_ bytes: Bytes) -> Bytes {
        var bytes = bytes
        while bytes.last == ascii(" ") { bytes = bytes.dropLast() }
        return bytes
    }

    private static func contains(_ needle: StaticString, in text: Bytes) -> Bool {
        let needle = UnsafeBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount)
        return text.indices.contains { text[$0] == needle[0] && text[$0...].starts(with: needle) }
    }

    // MARK: - Brackets

    /// The closer of an opening bracket, or nil.
    @inline(__always)
    static func closer(of c: UInt8) -> UInt8? {
        switch c {
        case ascii("("): return ascii(")")
        case ascii("<"): return ascii(">")
        case ascii("["): return ascii("]")
        case ascii("{"): return ascii("}")
        default: return nil
        }
    }

    @inline(__always)
    static func isCloser(_ c: UInt8) -> Bool {
        c == ascii(")") || c == ascii(">") || c == ascii("]") || c == ascii("}")
    }

    /// A stack of open brackets. A closer that does not match the top is ignored, and so
    /// is the `>` of `->`.
    struct Brackets {
        private var stack: [UInt8] = []

        var isEmpty: Bool { stack.isEmpty }

        mutating func track(_ chars: Bytes, _ i: Int) {
            let c = chars[i]
            if let close = closer(of: c) {
                stack.append(close)
            } else if isCloser(c), stack.last == c, !(c == ascii(">") && i > chars.startIndex && chars[i - 1] == ascii("-")) {
                stack.removeLast()
            }
        }
    }

    private static func containsAtTopLevel(_ needle: String, _ text: Bytes) -> Bool {
        var brackets = Brackets()
        for i in text.indices {
            if brackets.isEmpty && text[i...].starts(with: needle.utf8) { return true }
            brackets.track(text, i)
        }
        return false
    }

    /// The index of the bracket that closes the one at `open`.
    private static func matchingClose(of open: Int, in chars: Bytes) -> Int? {
        var brackets = Brackets()
        for i in open..<chars.endIndex {
            brackets.track(chars, i)
            if brackets.isEmpty { return i }
        }
        return nil
    }

    /// The index of the bracket that opens the one ending `chars`, found walking backwards.
    private static func matchingOpen(ofLastIn chars: Bytes) -> Int? {
        guard let last = chars.last, isCloser(last) else { return nil }
        var stack: [UInt8] = []
        for i in chars.indices.reversed() {
            let c = chars[i]
            if isCloser(c), !(c == ascii(">") && i > chars.startIndex && chars[i - 1] == ascii("-")) {
                stack.append(c)
            } else if let close = closer(of: c), stack.last == close {
                stack.removeLast()
                if stack.isEmpty { return i }
            }
        }
        return nil
    }
}

// MARK: - Rust legacy

/// Rust's legacy mangling: an Itanium nested name (`_ZN` {length ident} `E`) whose last
/// element is the hash `h` + 16 hex digits, and whose identifiers escape punctuation as
/// `$LT$`, `$u7b$`, `..` and the like. Printed like `rustc_demangle`'s `{:#}`: no hash.
enum RustLegacyDecoder {
    static func decode(_ symbol: String) -> String? {
        var bytes = Array(withoutLLVMSuffix(symbol).utf8)
        guard bytes.count > 4, bytes.starts(with: Array("_ZN".utf8)), bytes.allSatisfy({ $0 < 0x80 }) else { return nil }
        bytes.removeFirst(3)
        var elements: [ArraySlice<UInt8>] = []
        var at = 0
        while at < bytes.count, bytes[at] != UInt8(ascii: "E") {
            var length = 0
            let digitsStart = at
            while at < bytes.count, let digit = decimalDigit(bytes[at]) {
                guard at - digitsStart < 6 else { return nil }
                length = length * 10 + digit
                at += 1
            }
            guard length > 0, bytes.count - at >= length else { return nil }
            elements.append(bytes[at..<(at + length)])
            at += length
        }
        guard at < bytes.count, elements.count >= 2, isHash(elements.last!) else { return nil }
        let suffix = bytes[(at + 1)...]
        guard suffix.isEmpty || (suffix.first == UInt8(ascii: ".") && isSymbolLike(suffix)) else { return nil }
        var out = ""
        for (index, element) in elements.dropLast().enumerated() {
            if index > 0 { out += "::" }
            guard let text = unescape(element) else { return nil }
            out += text
        }
        return out + String(decoding: suffix, as: UTF8.self)
    }

    /// `h` and exactly 16 lowercase hex digits.
    static func isHash(_ element: ArraySlice<UInt8>) -> Bool {
        element.count == 17 && element.first == UInt8(ascii: "h")
            && element.dropFirst().allSatisfy { hexDigit($0) != nil }
    }

    private static let escapes: [String: String] = [
        "SP": "@", "BP": "*", "RF": "&", "LT": "<", "GT": ">", "LP": "(", "RP": ")", "C": ",",
    ]

    static func unescape(_ element: ArraySlice<UInt8>) -> String? {
        var rest = element
        // A leading `_` only guards a `$` from starting the identifier.
        if rest.starts(with: Array("_$".utf8)) { rest = rest.dropFirst() }
        var out = ""
        while let c = rest.first {
            if c == UInt8(ascii: ".") {
                if rest.dropFirst().first == UInt8(ascii: ".") {
                    out += "::"
                    rest = rest.dropFirst(2)
                } else {
                    out += "."
                    rest = rest.dropFirst()
                }
            } else if c == UInt8(ascii: "$") {
                guard let end = rest.dropFirst().firstIndex(of: UInt8(ascii: "$")) else { return nil }
                let code = String(decoding: rest[(rest.startIndex + 1)..<end], as: UTF8.self)
                if let text = escapes[code] {
                    out += text
                } else if code.hasPrefix("u"), code.count <= 7, let value = UInt32(code.dropFirst(), radix: 16),
                          let scalar = Unicode.Scalar(value) {
                    out.unicodeScalars.append(scalar)
                } else {
                    return nil
                }
                rest = rest[(end + 1)...]
            } else {
                let end = rest.firstIndex { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "$") } ?? rest.endIndex
                out += String(decoding: rest[..<end], as: UTF8.self)
                rest = rest[end...]
            }
        }
        return out
    }
}

/// `name.llvm.1234ABCD` (a ThinLTO-promoted local) -> `name`.
func withoutLLVMSuffix(_ symbol: String) -> Substring {
    let marker = Array(".llvm.".utf8)
    let bytes = Array(symbol.utf8)
    guard bytes.count > marker.count,
          let at = (0...(bytes.count - marker.count)).first(where: { bytes[$0..<($0 + marker.count)].elementsEqual(marker) })
    else { return Substring(symbol) }
    let tail = bytes[(at + marker.count)...]
    guard tail.allSatisfy({ $0 == UInt8(ascii: "@") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains($0) }) else { return Substring(symbol) }
    return Substring(String(decoding: bytes[..<at], as: UTF8.self))
}

/// A suffix such as `.0.0` or `.cold` that can be shown after the demangled name.
func isSymbolLike(_ bytes: ArraySlice<UInt8>) -> Bool {
    bytes.allSatisfy { $0 > 0x20 && $0 < 0x7F }
}

private func decimalDigit(_ byte: UInt8) -> Int? {
    byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") ? Int(byte - UInt8(ascii: "0")) : nil
}

private func hexDigit(_ byte: UInt8) -> UInt64? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt64(byte - UInt8(ascii: "0"))
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt64(byte - UInt8(ascii: "a") + 10)
    default: return nil
    }
}

// MARK: - Rust v0

/// Rust's v0 mangling (RFC 2603): `_R` path [instantiating-crate] [suffix]. Printed like
/// `rustc_demangle`'s `{:#}`: no crate disambiguators, no const types. Constructs this
/// decoder does not know (newer const forms) make the whole name nil.
struct RustV0Decoder {
    private struct Invalid: Error {}

    /// The symbol after `_R`; backreferences are offsets into it.
    private let sym: [UInt8]
    private var pos = 0
    private var depth = 0
    /// Every construct parsed counts, printed or skipped, so backreference fan-out in a
    /// skipped impl path cannot run away either.
    private var steps = 0
    /// > 0 while parsing something that is not printed (an impl's own path).
    private var silent = 0
    private var boundLifetimes = 0
    private var out = ""

    private static let maxDepth = 300
    private static let maxSteps = 100_000

    private init(_ sym: [UInt8]) {
        self.sym = sym
    }

    static func decode(_ symbol: String) -> String? {
        let bytes = Array(withoutLLVMSuffix(symbol).utf8)
        guard bytes.count > 2, bytes[0] == UInt8(ascii: "_"), bytes[1] == UInt8(ascii: "R"),
              bytes.allSatisfy({ $0 < 0x80 }),
              (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(bytes[2]) else { return nil }
        var decoder = RustV0Decoder(Array(bytes[2...]))
        do {
            try decoder.printPath(inValue: true)
            // The instantiating crate: parsed to find the end, not shown.
            if let next = decoder.peek(), (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(next) {
                decoder.silent += 1
                try decoder.printPath(inValue: false)
                decoder.silent -= 1
            }
        } catch {
            return nil
        }
        let suffix = decoder.sym[decoder.pos...]
        if suffix.isEmpty { return decoder.out }
        guard suffix.first == UInt8(ascii: "."), isSymbolLike(suffix) else { return nil }
        return decoder.out + String(decoding: suffix, as: UTF8.self)
    }

    // MARK: Reading

    private func peek() -> UInt8? {
        pos < sym.count ? sym[pos] : nil
    }

    private mutating func next() throws -> UInt8 {
        guard pos < sym.count else { throw Invalid() }
        pos += 1
        return sym[pos - 1]
    }

    private mutating func eat(_ c: Character) -> Bool {
        guard pos < sym.count, sym[pos] == c.asciiValue! else { return false }
        pos += 1
        return true
    }

    private mutating func enter() throws {
        depth += 1
        steps += 1
        if depth > Self.maxDepth || steps > Self.maxSteps { throw Invalid() }
    }

    private mutating func leave() {
        depth -= 1
    }

    private mutating func write(_ text: String) throws {
        guard silent == 0 else { return }
        out += text
        if out.utf8.count > Demangler.maxOutputLength { throw Invalid() }
    }

    /// `_` is 0; otherwise base-62 digits (0-9a-zA-Z) then `_`, plus one.
    private mutating func integer62() throws -> UInt64 {
        if eat("_") { return 0 }
        var value: UInt64 = 0
        while !eat("_") {
            let c = try next()
            let digit: UInt64
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt64(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): digit = UInt64(c - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): digit = UInt64(c - UInt8(ascii: "A")) + 36
            default: throw Invalid()
            }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 62)
            let (sum, overflow2) = times.addingReportingOverflow(digit)
            if overflow1 || overflow2 { throw Invalid() }
            value = sum
        }
        guard value < UInt64.max else { throw Invalid() }
        return value + 1
    }

    /// 0 without the tag, else the number after it plus one.
    private mutating func optionalInteger62(_ tag: Character) throws -> UInt64 {
        guard eat(tag) else { return 0 }
        let value = try integer62()
        guard value < UInt64.max else { throw Invalid() }
        return value + 1
    }

    private mutating func disambiguator() throws -> UInt64 {
        try optionalInteger62("s")
    }

    /// `[u] decimal [_] bytes`; `u` marks Punycode, whose last `_` separates the ASCII part.
    private mutating func ident() throws -> String {
        let isPunycode = eat("u")
        guard let first = peek(), let firstDigit = decimalDigit(first) else { throw Invalid() }
        pos += 1
        var length = firstDigit
        if length != 0 {
            while let c = peek(), let digit = decimalDigit(c) {
                pos += 1
                length = length * 10 + digit
                if length > sym.count { throw Invalid() }
            }
        }
        _ = eat("_")
        guard length <= sym.count - pos else { throw Invalid() }
        let bytes = sym[pos..<(pos + length)]
        pos += length
        guard isPunycode else { return String(decoding: bytes, as: UTF8.self) }
        let ascii: ArraySlice<UInt8>, encoded: ArraySlice<UInt8>
        if let underscore = bytes.lastIndex(of: UInt8(ascii: "_")) {
            ascii = bytes[..<underscore]
            encoded = bytes[(underscore + 1)...]
        } else {
            ascii = []
            encoded = bytes
        }
        guard !encoded.isEmpty, let decoded = Self.punycode(ascii: ascii, encoded: encoded) else { throw Invalid() }
        return decoded
    }

    /// RFC 3492 decoding, with every step checked for overflow.
    static func punycode(ascii: ArraySlice<UInt8>, encoded: ArraySlice<UInt8>) -> String? {
        var output: [Unicode.Scalar] = ascii.map { Unicode.Scalar($0) }
        let base = 36, tMin = 1, tMax = 26, skew = 38
        var damp = 700, bias = 72, i = 0, n = 0x80
        var input = encoded[...]
        while !input.isEmpty {
            var delta = 0, weight = 1, k = 0
            while true {
                k += base
                let t = min(max(k - bias, tMin), tMax)
                guard let c = input.popFirst() else { return nil }
                let digit: Int
                switch c {
                case UInt8(ascii: "a")...UInt8(ascii: "z"): digit = Int(c - UInt8(ascii: "a"))
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = 26 + Int(c - UInt8(ascii: "0"))
                default: return nil
                }
                let (product, o1) = digit.multipliedReportingOverflow(by: weight)
                let (sum, o2) = delta.addingReportingOverflow(product)
                guard !o1, !o2 else { return nil }
                delta = sum
                if digit < t { break }
                let (w, o3) = weight.multipliedReportingOverflow(by: base - t)
                guard !o3 else { return nil }
                weight = w
            }
            let length = output.count + 1
            let (position, o4) = i.addingReportingOverflow(delta)
            guard !o4 else { return nil }
            let (code, o5) = n.addingReportingOverflow(position / length)
            guard !o5, code <= 0x10FFFF, let scalar = Unicode.Scalar(UInt32(code)) else { return nil }
            n = code
            i = position % length
            output.insert(scalar, at: i)
            i += 1
            guard output.count <= 4096 else { return nil }
            // Bias adaptation.
            var d = delta / damp
            damp = 2
            d += d / length
            var kk = 0
            while d > ((base - tMin) * tMax) / 2 {
                d /= base - tMin
                kk += base
            }
            bias = kk + ((base - tMin + 1) * d) / (d + skew)
        }
        var text = ""
        text.unicodeScalars.append(contentsOf: output)
        return text
    }

    /// Parses what a backreference points at with `body`, then continues after it. Targets
    /// must lie before the reference, so chains of them end.
    private mutating func backref<T>(_ body: (inout RustV0Decoder) throws -> T) throws -> T {
        let start = pos - 1
        let target = try integer62()
        guard target < UInt64(start) else { throw Invalid() }
        let saved = pos
        pos = Int(target)
        try enter()
        let result = try body(&self)
        leave()
        pos = saved
        return result
    }

    // MARK: Printing

    private mutating func printPath(inValue: Bool) throws {
        try enter()
        defer { leave() }
        let tag = try next()
        switch tag {
        case UInt8(ascii: "C"):
            _ = try disambiguator()
            try write(try ident())
        case UInt8(ascii: "N"):
            let namespace = try next()
            let isSpecial = (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(namespace)
            guard isSpecial || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(namespace) else { throw Invalid() }
            try printPath(inValue: inValue)
            let index = try disambiguator()
            let name = try ident()
            if isSpecial {
                let kind = namespace == UInt8(ascii: "C") ? "closure"
                    : namespace == UInt8(ascii: "S") ? "shim" : String(UnicodeScalar(namespace))
                try write("::{" + kind + (name.isEmpty ? "" : ":" + name) + "#\(index)}")
            } else if !name.isEmpty {
                try write("::" + name)
            }
        case UInt8(ascii: "M"), UInt8(ascii: "X"), UInt8(ascii: "Y"):
            if tag != UInt8(ascii: "Y") {
                // The impl's own path (where it was written) is not shown.
                _ = try disambiguator()
                silent += 1
                try printPath(inValue: false)
                silent -= 1
            }
            try write("<")
            try printType()
            if tag != UInt8(ascii: "M") {
                try write(" as ")
                try printPath(inValue: false)
            }
            try write(">")
        case UInt8(ascii: "I"):
            try printPath(inValue: inValue)
            try write(inValue ? "::<" : "<")
            try printList(separator: ", ") { try $0.printGenericArg() }
            try write(">")
        case UInt8(ascii: "B"):
            try backref { try $0.printPath(inValue: inValue) }
        default:
            throw Invalid()
        }
    }

    /// Elements until `E`; returns how many.
    @discardableResult
    private mutating func printList(separator: String, _ element: (inout RustV0Decoder) throws -> Void) throws -> Int {
        var count = 0
        while !eat("E") {
            if count > 0 { try write(separator) }
            try element(&self)
            count += 1
        }
        return count
    }

    private mutating func printGenericArg() throws {
        if eat("L") {
            try printLifetime(try integer62())
        } else if eat("K") {
            try printConst()
        } else {
            try printType()
        }
    }

    /// 0 is `'_`; n counts back from the innermost binder: `'a`, `'b`, …, `'_26`, ….
    private mutating func printLifetime(_ index: UInt64) throws {
        guard index != 0 else { return try write("'_") }
        guard index <= UInt64(boundLifetimes) else { throw Invalid() }
        let depth = UInt64(boundLifetimes) - index
        if depth < 26 {
            try write("'" + String(UnicodeScalar(UInt8(ascii: "a") + UInt8(depth))))
        } else {
            try write("'_\(depth)")
        }
    }

    /// An optional `G` binder introducing late-bound lifetimes (`for<'a, 'b> `) around `body`.
    private mutating func inBinder(_ body: (inout RustV0Decoder) throws -> Void) throws {
        let count = try optionalInteger62("G")
        guard count <= 64 else { throw Invalid() }
        if count > 0 {
            var names: [String] = []
            for _ in 0..<count {
                boundLifetimes += 1
                let depth = boundLifetimes - 1
                names.append(depth < 26 ? "'" + String(UnicodeScalar(UInt8(ascii: "a") + UInt8(depth))) : "'_\(depth)")
            }
            try write("for<" + names.joined(separator: ", ") + "> ")
        }
        try body(&self)
        boundLifetimes -= Int(count)
    }

    private static let basicTypes: [UInt8: String] = [
        UInt8(ascii: "a"): "i8", UInt8(ascii: "b"): "bool", UInt8(ascii: "c"): "char",
        UInt8(ascii: "d"): "f64", UInt8(ascii: "e"): "str", UInt8(ascii: "f"): "f32",
        UInt8(ascii: "h"): "u8", UInt8(ascii: "i"): "isize", UInt8(ascii: "j"): "usize",
        UInt8(ascii: "l"): "i32", UInt8(ascii: "m"): "u32", UInt8(ascii: "n"): "i128",
        UInt8(ascii: "o"): "u128", UInt8(ascii: "p"): "_", UInt8(ascii: "s"): "i16",
        UInt8(ascii: "t"): "u16", UInt8(ascii: "u"): "()", UInt8(ascii: "v"): "...",
        UInt8(ascii: "x"): "i64", UInt8(ascii: "y"): "u64", UInt8(ascii: "z"): "!",
    ]

    private mutating func printType() throws {
        let tag = try next()
        if let basic = Self.basicTypes[tag] { return try write(basic) }
        try enter()
        defer { leave() }
        switch tag {
        case UInt8(ascii: "R"), UInt8(ascii: "Q"):
            try write("&")
            if eat("L") {
                let lifetime = try integer62()
                if lifetime != 0 {
                    try printLifetime(lifetime)
                    try write(" ")
                }
            }
            if tag == UInt8(ascii: "Q") { try write("mut ") }
            try printType()
        case UInt8(ascii: "P"), UInt8(ascii: "O"):
            try write(tag == UInt8(ascii: "P") ? "*const " : "*mut ")
            try printType()
        case UInt8(ascii: "A"), UInt8(ascii: "S"):
            try write("[")
            try printType()
            if tag == UInt8(ascii: "A") {
                try write("; ")
                try printConst()
            }
            try write("]")
        case UInt8(ascii: "T"):
            try write("(")
            let count = try printList(separator: ", ") { try $0.printType() }
            try write(count == 1 ? ",)" : ")")
        case UInt8(ascii: "F"):
            try inBinder { try $0.printFunctionSignature() }
        case UInt8(ascii: "D"):
            try write("dyn ")
            try inBinder { try $0.printList(separator: " + ") { try $0.printDynTrait() } }
            guard eat("L") else { throw Invalid() }
            let lifetime = try integer62()
            if lifetime != 0 {
                try write(" + ")
                try printLifetime(lifetime)
            }
        case UInt8(ascii: "B"):
            try backref { try $0.printType() }
        default:
            pos -= 1
            try printPath(inValue: false)
        }
    }

    /// `[U] [K abi] {type} E type`, after the binder.
    private mutating func printFunctionSignature() throws {
        let isUnsafe = eat("U")
        var abi: String?
        if eat("K") {
            if eat("C") {
                abi = "C"
            } else {
                guard peek() != UInt8(ascii: "u") else { throw Invalid() }
                let name = try ident()
                guard !name.isEmpty else { throw Invalid() }
                // `-` in ABI names is mangled as `_`.
                abi = String(name.map { $0 == "_" ? "-" : $0 })
            }
        }
        if isUnsafe { try write("unsafe ") }
        if let abi { try write("extern \"" + abi + "\" ") }
        try write("fn(")
        try printList(separator: ", ") { try $0.printType() }
        try write(")")
        if !eat("u") {
            try write(" -> ")
            try printType()
        }
    }

    private mutating func printDynTrait() throws {
        var open = try printPathMaybeOpenGenerics()
        while eat("p") {
            try write(open ? ", " : "<")
            open = true
            try write(try ident() + " = ")
            try printType()
        }
        if open { try write(">") }
    }

    /// Prints a trait path leaving an `I` path's `<…` open, so associated type bindings
    /// can follow inside it; returns whether it did.
    private mutating func printPathMaybeOpenGenerics() throws -> Bool {
        if eat("B") {
            return try backref { try $0.printPathMaybeOpenGenerics() }
        }
        if eat("I") {
            try enter()
            defer { leave() }
            try printPath(inValue: false)
            try write("<")
            try printList(separator: ", ") { try $0.printGenericArg() }
            return true
        }
        try printPath(inValue: false)
        return false
    }

    private mutating func printConst() throws {
        try enter()
        defer { leave() }
        if eat("B") {
            return try backref { try $0.printConst() }
        }
        let type = try next()
        switch type {
        case UInt8(ascii: "p"):
            try write("_")
        case UInt8(ascii: "h"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "y"), UInt8(ascii: "o"), UInt8(ascii: "j"):
            try write(try unsignedConst())
        case UInt8(ascii: "a"), UInt8(ascii: "s"), UInt8(ascii: "l"), UInt8(ascii: "x"), UInt8(ascii: "n"), UInt8(ascii: "i"):
            let negative = eat("n")
            try write((negative ? "-" : "") + (try unsignedConst()))
        case UInt8(ascii: "b"):
            switch try hexNibbles() {
            case [UInt8(ascii: "0")]: try write("false")
            case [UInt8(ascii: "1")]: try write("true")
            default: throw Invalid()
            }
        case UInt8(ascii: "c"):
            let hex = try hexNibbles()
            guard hex.count <= 8, let value = UInt32(String(decoding: hex, as: UTF8.self), radix: 16),
                  let scalar = Unicode.Scalar(value) else { throw Invalid() }
            try write(Self.quoted(scalar))
        default:
            // Newer const forms (references, arrays, tuples, ADTs, str): not decoded.
            throw Invalid()
        }
    }

    /// Lowercase hex digits up to `_`.
    private mutating func hexNibbles() throws -> ArraySlice<UInt8> {
        let start = pos
        while true {
            let c = try next()
            if c == UInt8(ascii: "_") { break }
            guard hexDigit(c) != nil else { throw Invalid() }
        }
        return sym[start..<(pos - 1)]
    }

    /// Decimal when it fits in 64 bits, else the hex digits with `0x`.
    private mutating func unsignedConst() throws -> String {
        let hex = try hexNibbles()
        guard hex.count <= 16 else { return "0x" + String(decoding: hex, as: UTF8.self) }
        return String(hex.reduce(UInt64(0)) { $0 << 4 | hexDigit($1)! })
    }

    /// A char constant as Rust's `{:?}` shows it, e.g. `'v'`, `'\n'`, `'\u{7f}'`.
    static func quoted(_ scalar: Unicode.Scalar) -> String {
        switch scalar {
        case "\t": return "'\\t'"
        case "\r": return "'\\r'"
        case "\n": return "'\\n'"
        case "\0": return "'\\0'"
        case "'": return "'\\''"
        case "\\": return "'\\\\'"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value) {
                return "'\\u{" + String(scalar.value, radix: 16) + "}'"
            }
            return "'" + String(Character(scalar)) + "'"
        }
    }
}
