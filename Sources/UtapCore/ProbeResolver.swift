import Glibc

/// Turns parsed probes into exact probe sites: finds the file, the symbol, the address and
/// its file offset, and refuses sites that are not instruction starts.
public struct ProbeResolver {
    /// The traced process, when there is one (its mappings decide which library file).
    public var pid: Int32?
    /// The COMMAND's executable (resolved path), when utap starts one.
    public var executable: String?
    /// Warnings for the user (e.g. an address whose boundary could not be checked).
    public internal(set) var warnings: [String] = []
    private var images: [String: ELFImage] = [:]
    private var demangled: [String: DemangledFunctions] = [:]
    /// `links(executable, library)` by library path: asked once per probe.
    private var linked: [String: Bool] = [:]

    public init(pid: Int32?, executable: String?) {
        self.pid = pid
        self.executable = executable
    }

    public mutating func resolve(_ spec: ProbeSpec) throws(UtapError) -> [ResolvedProbe] {
        let path = try targetPath(spec)
        let image = try image(at: path)
        switch spec.location {
        case .symbol(let name):
            let function = try uniqueFunction(name, in: image, probe: spec.name)
            return [try site(spec, name: spec.name, image: image, function: function, offset: nil)]
        case .symbolOffset(let name, let offset):
            let function = try uniqueFunction(name, in: image, probe: spec.name)
            return [try site(spec, name: spec.name, image: image, function: function, offset: offset)]
        case .glob(let pattern):
            // Raw names and demangled ones (with their shorter keys); each match is named
            // by its demangled name.
            // A compiler's cold fragment (`f.cold`, `f.cold.1`) is part of f, not a function
            // with an entry: a glob takes one only when it says `.cold` itself.
            let fragments = !pattern.contains(".cold")
            var matches = image.functions.filter { fnmatch(pattern, $0.name, 0) == 0 && !(fragments && Self.isColdFragment($0.name)) }
                .map { (symbol: $0, name: Demangler.demangle($0.name) ?? $0.name) }
            let raw = Set(matches.map(\.symbol.name))
            matches += demangledFunctions(image).functions(matching: pattern)
                .filter { !raw.contains($0.symbol.name) && !(fragments && Self.isColdFragment($0.symbol.name)) }
                .map { (symbol: $0.symbol, name: $0.name.text) }
            var seen = Set<UInt64>()
            matches = matches.sorted { ($0.name, $0.symbol.name) < ($1.name, $1.symbol.name) }
                .filter { seen.insert($0.symbol.address).inserted }
            // Functions that demangle alike (legacy Rust generics, whose names lack their
            // arguments) keep their symbol names apart.
            let shared = Dictionary(grouping: matches, by: \.name).filter { $0.value.count > 1 }.keys
            matches = matches.map { shared.contains($0.name) && $0.name != $0.symbol.name ? ($0.symbol, $0.symbol.name) : $0 }
            // Local symbols of one name (libc's eight `str_to_mpn.part.0.constprop.0`) by
            // their address too, so their rows and JSON keys stay apart.
            let stillShared = Dictionary(grouping: matches, by: \.name).filter { $0.value.count > 1 }.keys
            matches = matches.map { stillShared.contains($0.name) ? ($0.symbol, "\($0.name)@0x\(String($0.symbol.address, radix: 16))") : $0 }
            if matches.isEmpty {
                throw .usage("probe '\(spec.name)': no function in \(image.path) matches '\(pattern)'", hint: image.strippedHint)
            }
            let prefix = spec.target.map { "\($0):" } ?? ""
            let suffix = spec.kind == .return ? "%return" : ""
            var probes: [ResolvedProbe] = [], unresolved: [String] = []
            for match in matches {
                let f = match.symbol
                guard let function = f.isIFunc ? try? IFuncResolver.implementation(of: f, in: image) : f else {
                    unresolved.append("\(match.name) (an IFUNC whose implementation is not in the file)")
                    continue
                }
                probes.append(try site(spec, name: prefix + match.name + suffix, image: image, function: function, offset: nil))
            }
            return try leavingOutUnprobeable(probes, besides: unresolved, of: spec, pattern: pattern, image: image)
        case .address(let address):
            return [try addressSite(spec, image: image, address: address)]
        case .usdt(let provider, let name):
            return try resolveUSDT(spec, provider: provider, name: name, path: path)
        }
    }

    /// A glob's matches less those whose site no backend can probe: a vector (AVX)
    /// instruction, which the kernel's uprobes mishandle (`InstructionDecoder.entryOffset`),
    /// or one the ptrace backend refuses (a lock prefix, a system instruction). Left out
    /// for both backends alike, with one warning that also names `unresolved` (matches
    /// already left out, with why); a glob left with nothing is an error. A probe naming
    /// one function is refused by the backend that cannot probe it instead.
    private mutating func leavingOutUnprobeable(_ probes: [ResolvedProbe], besides unresolved: [String], of spec: ProbeSpec,
                                                pattern: String, image: ELFImage) throws(UtapError) -> [ResolvedProbe] {
        var kept: [ResolvedProbe] = [], left = unresolved
        for probe in probes {
            // Near the end of its segment the bytes cannot be read here: the backend checks.
            let reason: String?
            switch image.bytes(atVirtualAddress: probe.address, count: 16).flatMap({ InstructionAnalysis.uprobeProblem($0, at: probe.address) }) {
            case .vector: reason = "a vector instruction"
            case .refused(let why): reason = why
            case nil: reason = nil
            }
            if let reason {
                left.append("\(probe.function ?? probe.name) (\(reason))")
            } else {
                kept.append(probe)
            }
        }
        guard !left.isEmpty else { return kept }
        let shown = Self.firstFew(left)
        guard !kept.isEmpty else {
            throw .usage("probe '\(spec.name)': no function matching '\(pattern)' can be probed: \(shown)",
                         hint: "probe another instruction of one of them, e.g. NAME+OFFSET from 'utap list -v'")
        }
        warnings.append("probe '\(spec.name)': \(left.count) of the functions matching '\(pattern)' cannot be probed, "
                        + "left out: \(shown)")
        return kept
    }

    /// The first three of `names` for a message, `…` marking more.
    static func firstFew(_ names: [String]) -> String {
        names.prefix(3).joined(separator: ", ") + (names.count > 3 ? ", …" : "")
    }

    /// The file a probe's TARGET names, as a path the tracer can open.
    mutating func targetPath(_ spec: ProbeSpec) throws(UtapError) -> String {
        guard let target = spec.target else {
            if let executable { return executable }
            if let pid { return "/proc/\(pid)/exe" }
            throw .usage("probe '\(spec.name)': no target file", hint: "write TARGET:SYMBOL (e.g. /usr/bin/app:main or libc:malloc), or give -- COMMAND")
        }
        if let executable, !target.contains("/"), target == lastPathComponent(executable) {
            return executable
        }
        if let pid, target.contains("/") {
            // The file the process sees, even from another mount namespace or once deleted.
            return LibraryResolver.pathInProcess(target, pid: pid)
        }
        if pid == nil, let executable, let program = try? image(at: executable), program.needed.isEmpty,
           !isSameFile(target, executable),
           !warnings.contains(where: { $0.hasPrefix("\(executable) links no shared library") }) {
            warnings.append("\(executable) links no shared library: it does not run \(target)'s code, so probes there "
                            + "fire only in programs it starts (statically linked? probe its own copy: \(lastPathComponent(executable)):NAME)")
        }
        let (path, loaded) = try LibraryResolver.locate(target, pid: pid, executable: executable ?? pid.map { "/proc/\($0)/exe" })
        if pid == nil, let executable, !links(executable, path),
           !warnings.contains(where: { $0.hasPrefix("\(executable) does not link \(path)") }) {
            warnings.append("\(executable) does not link \(path): probes there fire only if it loads the library "
                            + "(dlopen) or runs a program that does (--follow-forks)")
        }
        if !loaded, let pid, !warnings.contains(where: { $0.hasPrefix("pid \(pid) has not loaded \(target) ") }) {
            warnings.append("pid \(pid) has not loaded \(target) (yet): its probes are on \(path), which it would load")
        }
        return path
    }

    /// Whether the program `executable` loads `library` at start: it is its dynamic
    /// loader or in the closure of its DT_NEEDED, as the loader finds them. True when it
    /// cannot tell (a script: its interpreter is another program).
    mutating func links(_ executable: String, _ library: String) -> Bool {
        if let known = linked[library] { return known }
        let answer = loads(executable, library)
        linked[library] = answer
        return answer
    }

    private mutating func loads(_ executable: String, _ library: String) -> Bool {
        guard let target = realPath(library), target != realPath(executable),
              let program = try? image(at: executable) else { return true }
        if program.needed.isEmpty && program.interpreter == nil { return true }  // static: warned about elsewhere
        if let loader = program.interpreter, realPath(loader) == target { return true }
        var queue = [executable], seen: Set<String> = []
        while let file = queue.popLast() {
            guard seen.insert(file).inserted, seen.count <= 256, let object = try? image(at: file) else { continue }
            for name in object.needed {
                guard let path = LibraryResolver.needed(name, of: object) else { continue }
                if realPath(path) == target { return true }
                queue.append(path)
            }
        }
        return false
    }

    mutating func image(at path: String) throws(UtapError) -> ELFImage {
        if let cached = images[path] { return cached }
        let image = try ELFImage.open(path)
        images[path] = image
        return image
    }

    /// The function `name` names: a symbol of that exact name, else the functions whose
    /// demangled name, or one of its shorter keys (`ns::Class::method` for
    /// `ns::Class::method(int) const`), is `name`. Several at different addresses are an
    /// error that lists them.
    mutating func uniqueFunction(_ name: String, in image: ELFImage, probe: String) throws(UtapError) -> ELFSymbol {
        var candidates = image.functions(named: name)
        var demangledMatch = false
        if candidates.isEmpty {
            candidates = demangledFunctions(image).functions(named: name).map(\.symbol)
            demangledMatch = true
        }
        guard let first = candidates.first else {
            let index = demangledFunctions(image)
            let names = Set(image.functions.map(\.name)).subtracting(index.entries.map(\.symbol.name))
                .union(index.entries.map { $0.name.keys.last ?? $0.name.text })
            let near = ELFImage.suggestions(for: name, among: names, limit: 5)
            throw .usage("probe '\(probe)': no function '\(name)' in \(image.path)",
                         hint: near.isEmpty ? image.strippedHint ?? "run 'utap list \(image.path)' to see its functions"
                                               : "did you mean: \(near.joined(separator: ", "))?")
        }
        if candidates.contains(where: { $0.address != first.address }) {
            var seen = Set<UInt64>()
            let distinct = candidates.sorted { ($0.address, $0.name) < ($1.address, $1.name) }
                .filter { seen.insert($0.address).inserted }
            if demangledMatch {
                let shown = distinct.map { displayName($0.name) }
                // Alike demangled names (legacy Rust generics) are told apart by symbol name.
                let alike = Set(shown).count < shown.count
                let listed = zip(distinct, shown).map { "0x" + String($0.address, radix: 16) + " " + (alike ? $0.name : $1) }
                var unique = Set<String>()
                throw .usage("probe '\(probe)': '\(name)' names \(distinct.count) functions in \(image.path): " +
                             shown.filter { unique.insert($0).inserted }.joined(separator: "; "),
                             hint: "probe them all with a glob ('\(name)*'), or one by address: \(listed.joined(separator: ", "))")
            }
            let addresses = candidates.map { "0x" + String($0.address, radix: 16) }.joined(separator: ", ")
            throw .usage("probe '\(probe)': '\(name)' names \(candidates.count) functions in \(image.path)",
                         hint: "probe one by address: \(addresses)")
        }
        return first.isIFunc ? try IFuncResolver.implementation(of: first, in: image) : first
    }

    /// `name.cold` or `name.cold.N`: code GCC moved out of `name` (no entry, no return).
    static func isColdFragment(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2, let last = parts.last else { return false }
        if last == "cold" { return true }
        return parts.count >= 3 && parts[parts.count - 2] == "cold" && !last.isEmpty && last.allSatisfy { $0.isNumber }
    }

    /// The image's functions by demangled name, built the first time a probe needs them.
    mutating func demangledFunctions(_ image: ELFImage) -> DemangledFunctions {
        if let cached = demangled[image.path] { return cached }
        let functions = DemangledFunctions(image.functions)
        demangled[image.path] = functions
        return functions
    }

    /// How messages name a function: demangled when it is mangled.
    func displayName(_ name: String) -> String {
        Demangler.demangle(name) ?? name
    }

    /// A probe on `function`: at `offset` when given, else at its entry, past a leading
    /// endbr64 and flag-setting tests that lead to an instruction the kernel emulates
    /// (`InstructionDecoder.entryOffset`: same observable state; an emulated instruction
    /// costs about 18x less than a single-stepped one), and in Go past the stack check.
    func site(_ spec: ProbeSpec, name: String, image: ELFImage, function: ELFSymbol, offset: UInt64?) throws(UtapError) -> ResolvedProbe {
        var delta: UInt64 = 0
        if let offset {
            if offset > 0 {
                try checkBoundary(image: image, function: function, offset: offset, probe: spec.name)
            }
            delta = offset
        } else if function.size > 0, let code = image.bytes(atVirtualAddress: function.address, count: Int(clamping: function.size)) {
            delta = UInt64(InstructionDecoder.entryOffset(in: code, goStackCheck: image.isGoProgram))
        } else if let head = image.bytes(atVirtualAddress: function.address, count: 4),
                  InstructionDecoder.startsWithEndbr64(head) {
            delta = 4  // no size: the jumps inside cannot be checked, so only endbr64
        }
        return try makeProbe(spec, name: name, image: image, function: displayName(function.name), address: function.address + delta)
    }

    mutating func addressSite(_ spec: ProbeSpec, image: ELFImage, address: UInt64) throws(UtapError) -> ResolvedProbe {
        guard let function = image.enclosingFunction(of: address) else {
            if spec.kind == .return {
                throw .usage("probe '\(spec.name)': 0x\(String(address, radix: 16)) is not the start of a known function", hint: "return probes go on a function's first instruction")
            }
            warnings.append("probe '\(spec.name)': no symbol covers 0x\(String(address, radix: 16)); its instruction boundary is not checked")
            return try makeProbe(spec, name: spec.name, image: image, function: nil, address: address)
        }
        let offset = address - function.address
        if spec.kind == .return && offset != 0 {
            throw .usage("probe '\(spec.name)': 0x\(String(address, radix: 16)) is \(displayName(function.name))+0x\(String(offset, radix: 16)), not a function start", hint: "return probes go on a function's first instruction")
        }
        if offset > 0 {
            try checkBoundary(image: image, function: function, offset: offset, probe: spec.name)
        }
        return try makeProbe(spec, name: spec.name, image: image, function: displayName(function.name), address: address)
    }

    func checkBoundary(image: ELFImage, function: ELFSymbol, offset: UInt64, probe: String) throws(UtapError) {
        guard function.size > 0, offset < function.size else {
            throw .usage("probe '\(probe)': offset 0x\(String(offset, radix: 16)) is outside \(displayName(function.name)) (\(function.size) bytes)")
        }
        // Up to the probed instruction's longest possible end: all the boundary check reads.
        let needed = Int(clamping: function.size - offset > 15 ? offset + 15 : function.size)
        guard let code = image.bytes(atVirtualAddress: function.address, count: needed) else {
            throw .runtime("probe '\(probe)': cannot read the code of \(displayName(function.name)) from \(image.path)")
        }
        if !InstructionDecoder.isBoundary(offset: Int(offset), in: code) {
            var starts: [String] = []
            var at = 0
            while at <= Int(offset), let length = InstructionDecoder.instructionLength(at: at, in: code) {
                starts.append("+\(at)")
                at += length
            }
            starts.append("+\(at)")
            throw .usage("probe '\(probe)': \(displayName(function.name))+\(offset) is not the start of an instruction",
                         hint: "instructions near there start at \(starts.suffix(4).joined(separator: ", "))")
        }
    }

    func makeProbe(_ spec: ProbeSpec, name: String, image: ELFImage, function: String?, address: UInt64) throws(UtapError) -> ResolvedProbe {
        guard let fileOffset = image.fileOffset(ofVirtualAddress: address) else {
            throw .usage("probe '\(spec.name)': address 0x\(String(address, radix: 16)) is not in a loadable segment of \(image.path)")
        }
        guard image.segment(containing: address)?.isExecutable == true else {
            throw .usage("probe '\(spec.name)': address 0x\(String(address, radix: 16)) is in a data segment of \(image.path), not in code",
                         hint: "'utap list -v \(image.path)' shows its functions' addresses")
        }
        var probe = ResolvedProbe(name: name, kind: spec.kind, fields: spec.fields, path: image.path,
                                  function: function, address: address, fileOffset: fileOffset)
        if image.isGoProgram {
            probe.takesGoArguments = true
            probe.fields = probe.fields.map { field in
                guard case .arg(let n) = field.source, n < Self.goArgumentRegisters.count else { return field }
                var inRegister = field
                inRegister.source = .location(.register(Self.goArgumentRegisters[n]))
                return inRegister
            }
        }
        return probe
    }

    /// Where Go's register ABI (Go 1.17 and later) puts a function's first integer
    /// arguments: `arg0`..`arg5` of a Go function read these. Its first result is in rax,
    /// as in C.
    public static let goArgumentRegisters: [Register] = [.rax, .rbx, .rcx, .rdi, .rsi, .r8]
}
