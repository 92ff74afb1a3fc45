/// USDT probes: `usdt:TARGET:PROVIDER:NAME` resolved to every site of that probe in the
/// file, each with its own argument locations (a probe inlined in several places has
/// one site per place, and the compiler may put an argument elsewhere in each).
extension ProbeResolver {
    mutating func resolveUSDT(_ spec: ProbeSpec, provider: String, name: String, path: String) throws(UtapError) -> [ResolvedProbe] {
        let image = try image(at: path)
        let all = try SDTNotes.read(path)
        let sites = all.filter { $0.provider == provider && $0.name == name }
        guard !sites.isEmpty else {
            let known = Set(all.map { "\($0.provider):\($0.name)" }).sorted()
            throw .usage("probe '\(spec.name)': no USDT probe \(provider):\(name) in \(path)",
                         hint: known.isEmpty ? "the file has no .note.stapsdt probes"
                             : "it has \(known.prefix(8).joined(separator: ", "))\(known.count > 8 ? ", ..." : "")")
        }
        return try sites.map { (site: SDTProbe) throws(UtapError) -> ResolvedProbe in
            let fields = try usdtFields(spec, site: site)
            let address = site.address + (Self.startsWithNopAndNop5(image.bytes(atVirtualAddress: site.address, count: 6)) ? 1 : 0)
            guard let fileOffset = image.fileOffset(ofVirtualAddress: address) else {
                throw .usage("probe '\(spec.name)': site 0x\(String(site.address, radix: 16)) is not in a loadable segment of \(path)")
            }
            var semaphore: UInt64?
            if site.semaphore != 0 {
                guard let offset = image.fileOffset(ofVirtualAddress: site.semaphore) else {
                    throw .usage("probe '\(spec.name)': semaphore 0x\(String(site.semaphore, radix: 16)) is not in the file of \(path)")
                }
                semaphore = offset
            }
            return ResolvedProbe(name: spec.name, kind: .entry, fields: fields, path: image.path, function: nil,
                                 address: address, fileOffset: fileOffset, semaphoreOffset: semaphore)
        }
    }

    /// The probe's fields with USDT locations; no fields given means every argument.
    private func usdtFields(_ spec: ProbeSpec, site: SDTProbe) throws(UtapError) -> [FieldSpec] {
        let requested = spec.fields.isEmpty
            ? site.arguments.indices.prefix(6).map { FieldSpec(name: "arg\($0)", source: .arg($0), type: .s64, typeIsDefault: true) }
            : spec.fields
        return try requested.map { (field: FieldSpec) throws(UtapError) -> FieldSpec in
            guard case .arg(let n) = field.source else {
                throw .usage("probe '\(spec.name)': USDT fields are arg0..arg\(max(site.arguments.count - 1, 0))")
            }
            guard n < site.arguments.count else {
                throw .usage("probe '\(spec.name)': has \(site.arguments.count) argument\(site.arguments.count == 1 ? "" : "s"), no arg\(n)",
                             hint: "its arguments: \(site.argumentText.isEmpty ? "none" : site.argumentText)")
            }
            guard let argument = site.arguments[n] else {
                throw .usage("probe '\(spec.name)': arg\(n) ('\(site.argumentText.split(separator: " ")[n])') is a form utap cannot read")
            }
            return FieldSpec(name: field.name, source: .location(argument.location),
                             type: field.typeIsDefault ? argument.fieldType : field.type)
        }
    }

    /// Newer sys/sdt.h emits `nop; nop5` so the kernel can turn the 5-byte nop into a call
    /// (an optimized uprobe); a probe there costs less than on the 1-byte nop.
    static func startsWithNopAndNop5(_ bytes: [UInt8]?) -> Bool {
        bytes == [0x90, 0x0F, 0x1F, 0x44, 0x00, 0x00]
    }
}
