// The probe grammar (ProbeParser): any text either parses or is refused with a usage
// error, and a parsed probe written back in canonical form parses to the same probe.
import UtapCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProbeSpec(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let spec = try? ProbeParser.parse(text) else { return 0 }
    checkFields(spec)
    let canonical = canonicalText(spec)
    guard let again = try? ProbeParser.parse(canonical) else {
        fatalError("'\(text)' parsed, its canonical form '\(canonical)' did not")
    }
    // `name` is the text as written ("0X10", "f+0x10"), so only the meaning is compared.
    precondition(again.target == spec.target && again.location == spec.location && again.kind == spec.kind
                 && again.fields == spec.fields, "'\(text)' and its canonical form '\(canonical)' differ")
    return 0
}

/// What the grammar promises of fields, whatever the text.
private func checkFields(_ spec: ProbeSpec) {
    let isUSDT = if case .usdt = spec.location { true } else { false }
    precondition(spec.fields.count <= 6, "more than 6 fields")
    precondition(Set(spec.fields.map(\.name)).count == spec.fields.count, "a field name used twice")
    for field in spec.fields {
        switch field.source {
        case .arg(let n):
            precondition(n >= 0 && n <= (isUSDT ? 11 : 5) && spec.kind == .entry, "bad argument \(n)")
        case .ret:
            precondition(spec.kind == .return, "ret on an entry probe")
        case .location:
            preconditionFailure("the parser made a resolved location")
        }
        if case .string(let maxLength) = field.type {
            precondition((1...FieldType.maxStringLength).contains(maxLength), "string length \(maxLength)")
        }
    }
}

/// The probe written the one way this harness chooses: explicit names, decimal offsets,
/// lower-case hex addresses, a type only where the text gave one.
private func canonicalText(_ spec: ProbeSpec) -> String {
    var head: String
    switch spec.location {
    case .usdt(let provider, let name):
        head = "usdt:\(spec.target ?? ""):\(provider):\(name)"
    case .symbol(let symbol), .glob(let symbol):
        head = symbol
    case .symbolOffset(let symbol, let offset):
        head = "\(symbol)+\(offset)"
    case .address(let address):
        head = "0x" + String(address, radix: 16)
    }
    if case .usdt = spec.location {} else {
        if let target = spec.target { head = target + ":" + head }
        if spec.kind == .return { head += "%return" }
    }
    let fields = spec.fields.map { field in
        "\(field.name)=\(field.source)" + (field.typeIsDefault ? "" : ":" + typeText(field.type))
    }
    return ([head] + fields).joined(separator: " ")
}

private func typeText(_ type: FieldType) -> String {
    switch type {
    case .hex: return "x"
    case .pointer: return "ptr"
    case .string(let maxLength): return "str[\(maxLength)]"
    default: return "\(type)"
    }
}
