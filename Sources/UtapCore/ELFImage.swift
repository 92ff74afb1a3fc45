import CLibbpf
import CXZ
import Glibc

/// A function symbol of an ELF file.
public struct ELFSymbol: Equatable, Sendable {
    public var name: String
    /// `st_value`: an ELF virtual address of the file, not a runtime address.
    public var address: UInt64
    public var size: UInt64
    /// `STT_GNU_IFUNC`: `address` is the resolver that picks the implementation at load
    /// time, not the code that runs when the function is called.
    public var isIFunc: Bool

    public init(name: String, address: UInt64, size: UInt64, isIFunc: Bool = false) {
        self.name = name
        self.address = address
        self.size = size
        self.isIFunc = isIFunc
    }

    /// Whether `address` falls inside this symbol's code; never for a size-0 symbol.
    public func contains(_ address: UInt64) -> Bool {
        address >= self.address && address - self.address < size
    }
}

/// One `PT_LOAD` program header: how a range of the file is mapped.
public struct LoadSegment: Equatable, Sendable {
    public var virtualAddress: UInt64
    public var memorySize: UInt64
    public var fileOffset: UInt64
    public var fileSize: UInt64
    public var isExecutable: Bool

    public init(virtualAddress: UInt64, memorySize: UInt64, fileOffset: UInt64,
                fileSize: UInt64, isExecutable: Bool) {
        self.virtualAddress = virtualAddress
        self.memorySize = memorySize
        self.fileOffset = fileOffset
        self.fileSize = fileSize
        self.isExecutable = isExecutable
    }
}

/// An x86-64 ELF file parsed into plain values: its functions, load segments and dynamic
/// dependencies. The file stays open (owned, closed in `deinit`) only so that code bytes
/// can be read later with `bytes(atVirtualAddress:count:)`.
public final class ELFImage: Sendable {
    public let path: String
    /// `ET_DYN`: a shared library or a PIE executable.
    public let isSharedObject: Bool
    /// Defined `STT_FUNC` and `STT_GNU_IFUNC` symbols of `.symtab` and `.dynsym` (and of
    /// the `debugFile`'s `.symtab`), one per (name, address), sorted by address then name.
    public let functions: [ELFSymbol]
    public let segments: [LoadSegment]
    /// `DT_NEEDED` entries in file order.
    public let needed: [String]
    /// Functions the file calls from other files: undefined `STT_FUNC` symbols of
    /// `.dynsym`, without version.
    public let importedFunctions: Set<String>
    /// `PT_INTERP`: the dynamic loader an executable names, or nil.
    public let interpreter: String?
    /// `DT_RUNPATH`, else `DT_RPATH`, split on ':' with `$ORIGIN` left unexpanded.
    public let runPaths: [String]
    /// Whether the file still has its full symbol table (is not stripped).
    public let hasSymtab: Bool
    /// The GNU build ID note, empty when the file has none.
    public let buildID: [UInt8]
    /// The separate debug file whose full symbol table stands in for the one this stripped
    /// file lacks (`DebugFiles`), or nil.
    public let debugFile: String?
    /// Whether the file is a Go program (its runtime's `runtime.main` is there): Go
    /// functions open with a stack check (`InstructionDecoder.entryOffset`), and Go's
    /// runtime moves stacks (`ReturnSites`).
    public var isGoProgram: Bool { !functions(named: "runtime.main").isEmpty }
    /// Whether, stripped and without a debug file, the file named its functions in its own
    /// `.gnu_debugdata` (MiniDebugInfo: an xz-compressed ELF holding the symbols `.dynsym`
    /// lacks, as Fedora and RHEL ship; gdb and perf read it too).
    public let hasMiniDebugInfo: Bool

    private let fd: Int32
    private let byName: [String: [ELFSymbol]]
    /// Sized functions sorted by address, and for each index the largest last address of
    /// any symbol up to it, so lookups can stop as soon as nothing earlier can reach. Last,
    /// not end, and saturating: a crafted symbol may run to the top of the address space.
    private let sized: [ELFSymbol]
    private let maxLast: [UInt64]
    /// See `SymbolReader.primaryNames`.
    private let primaryNames: Set<String>

    private init(path: String, fd: Int32, contents: Contents, debugFile: String?, hasMiniDebugInfo: Bool) {
        self.path = path
        self.fd = fd
        self.debugFile = debugFile
        self.hasMiniDebugInfo = hasMiniDebugInfo
        isSharedObject = contents.isSharedObject
        functions = contents.functions
        segments = contents.segments
        needed = contents.needed
        importedFunctions = contents.importedFunctions
        interpreter = contents.interpreter
        runPaths = contents.runPaths
        hasSymtab = contents.hasSymtab
        buildID = contents.buildID
        primaryNames = contents.primaryNames
        byName = Dictionary(grouping: contents.functions, by: \.name)
        sized = contents.functions.filter { $0.size > 0 }
        var running: UInt64 = 0
        maxLast = sized.map { symbol in
            let (last, overflow) = symbol.address.addingReportingOverflow(symbol.size - 1)
            running = max(running, overflow ? .max : last)
            return running
        }
    }

    deinit {
        close(fd)
    }

    /// Opens and parses `path`. Throws a usage error when the file is missing, is not a
    /// regular file, is not ELF, or is an ELF for another machine than x86-64.
    public static func open(_ path: String) throws(UtapError) -> ELFImage {
        // O_NONBLOCK so that a FIFO is refused below instead of waited on.
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            throw .usage("'\(path)': \(openFailure(errno))")
        }
        do throws(UtapError) {
            var contents = try checkedContents(fd: fd, path: path)
            var debugFile: String?
            var hasMiniDebugInfo = false
            // Like gdb: a separate debug file first (it names more), else MiniDebugInfo.
            if !contents.hasSymtab, let debug = findDebugContents(of: path, contents) {
                contents.addFunctions(of: debug.contents)
                debugFile = debug.path
            } else if !contents.hasSymtab, let compressed = contents.miniDebugInfo,
                      let embedded = Contents.read(miniDebugInfo: compressed) {
                contents.addFunctions(of: embedded)
                hasMiniDebugInfo = true
            }
            return ELFImage(path: path, fd: fd, contents: contents, debugFile: debugFile,
                            hasMiniDebugInfo: hasMiniDebugInfo)
        } catch {
            close(fd)
            throw error
        }
    }

    /// The contents of the open file `fd`, once it is known to be a regular file and an
    /// x86-64 ELF (else a usage error saying what it is).
    private static func checkedContents(fd: Int32, path: String) throws(UtapError) -> Contents {
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw UtapError.usage(info.st_mode & S_IFMT == S_IFDIR
                ? "'\(path)': is a directory" : "'\(path)': not a regular file")
        }
        if let problem = headerProblem(readHeader(fd)) {
            throw UtapError.usage("'\(path)': \(problem)")
        }
        return try Contents.read(fd: fd, path: path)
    }

    /// The first debug file of `DebugFiles.candidates` that is one for this file.
    private static func findDebugContents(of path: String, _ contents: Contents) -> (path: String, contents: Contents)? {
        for candidate in DebugFiles.candidates(for: path, buildID: contents.buildID, link: contents.debugLink) {
            let fd = Glibc.open(candidate.path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard let debug = try? checkedContents(fd: fd, path: candidate.path), debug.hasSymtab else { continue }
            let matches = candidate.crc.map { DebugFiles.crc32(ofFile: candidate.path) == $0 } ?? (debug.buildID == contents.buildID)
            if matches { return (candidate.path, debug) }
        }
        return nil
    }

    /// What to do about a function that is not found in a stripped file without a debug
    /// file; nil when the file has its symbols.
    public var strippedHint: String? {
        guard !hasSymtab && debugFile == nil && !hasMiniDebugInfo else { return nil }
        return "\(path) is stripped: only its exported functions have names. Install its debug symbols "
            + "(looked for by build ID and debug link under \(DebugFiles.directories.joined(separator: ":")); "
            + "UTAP_DEBUG_DIR sets where) or probe an address: \(path):0xADDRESS"
    }

    /// Whether `path` opens as a 64-bit x86-64 ELF file, judged by its header alone.
    static func isNativeELF(_ path: String) -> Bool {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return headerProblem(readHeader(fd)) == nil
    }

    /// Why the ELF file at `path` cannot be traced here (32-bit, another architecture);
    /// nil when it is a 64-bit x86-64 ELF, or no ELF at all (a script: its interpreter runs).
    static func foreignELFProblem(_ path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let header = readHeader(fd)
        guard header.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else { return nil }
        return headerProblem(header)
    }

    /// The first 20 bytes of the file (through `e_machine`), or fewer if it is shorter.
    private static func readHeader(_ fd: Int32) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 20)
        let got = pread(fd, &header, header.count, 0)
        return Array(header.prefix(max(got, 0)))
    }

    /// Why a file starting with `header` (at least its first 20 bytes) cannot be traced on
    /// this machine, or nil when it is a 64-bit x86-64 ELF.
    static func headerProblem(_ header: [UInt8]) -> String? {
        guard header.count >= 20, header.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else {
            return "not an ELF file"
        }
        let bigEndian = header[5] == 2
        let machine = bigEndian ? UInt16(header[18]) << 8 | UInt16(header[19])
                                : UInt16(header[19]) << 8 | UInt16(header[18])
        let is64 = header[4] == 2
        if machine == 62 && is64 && !bigEndian { return nil }
        guard is64 else {
            return "32-bit ELF for \(machine == 62 ? "x32" : machineName(machine)), this machine is x86-64"
        }
        return "ELF for \(machineName(machine)), this machine is x86-64"
    }

    private static func machineName(_ machine: UInt16) -> String {
        machineNames[machine] ?? "machine \(machine)"
    }

    /// `e_machine` values of the architectures a user is likely to meet.
    private static let machineNames: [UInt16: String] = [
        2: "SPARC", 3: "x86", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "s390",
        40: "ARM", 43: "SPARC64", 62: "x86-64", 183: "AArch64", 243: "RISC-V",
        247: "BPF", 258: "LoongArch",
    ]

    private static func openFailure(_ code: Int32) -> String {
        switch code {
        case ENOENT, ENOTDIR: return "no such file"
        case EACCES, EPERM: return "permission denied"
        default: return String(cString: strerror(code))
        }
    }

    /// All functions with this exact name (aliases at different addresses are kept apart).
    public func functions(named name: String) -> [ELFSymbol] {
        byName[name] ?? []
    }

    /// The function whose code contains `address`: the innermost one when symbols nest,
    /// and among aliases of the same range the plainest name: a global or local one in its
    /// default version before a weak or old-version alias, then fewest leading underscores.
    /// Size-0 symbols never contain anything.
    public func enclosingFunction(of address: UInt64) -> ELFSymbol? {
        // Last symbol starting at or before `address`.
        var low = 0, high = sized.count
        while low < high {
            let mid = (low + high) / 2
            if sized[mid].address <= address { low = mid + 1 } else { high = mid }
        }
        var best: ELFSymbol?
        var index = low - 1
        while index >= 0 && maxLast[index] >= address {
            let candidate = sized[index]
            if candidate.contains(address), best.map({ isBetter(candidate, than: $0) }) ?? true {
                best = candidate
            }
            index -= 1
        }
        return best
    }

    private func isBetter(_ a: ELFSymbol, than b: ELFSymbol) -> Bool {
        if a.address != b.address { return a.address > b.address }
        if a.size != b.size { return a.size < b.size }
        let primaryA = primaryNames.contains(a.name), primaryB = primaryNames.contains(b.name)
        if primaryA != primaryB { return primaryA }
        let underscoresA = a.name.prefix { $0 == "_" }.count
        let underscoresB = b.name.prefix { $0 == "_" }.count
        if underscoresA != underscoresB { return underscoresA < underscoresB }
        return a.name < b.name
    }

    /// Where the byte at ELF virtual address `address` lies in the file, or nil when no
    /// `PT_LOAD` segment maps it from the file (e.g. `.bss`) or a crafted segment puts it
    /// beyond any file offset.
    public func fileOffset(ofVirtualAddress address: UInt64) -> UInt64? {
        segment(containing: address).flatMap { Self.fileOffset(of: address, in: $0) }
    }

    /// Up to `count` bytes of the file from ELF virtual address `address`: fewer when the
    /// segment's file contents end first, nil when `address` is not backed by the file.
    public func bytes(atVirtualAddress address: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, let segment = segment(containing: address),
              let offset = Self.fileOffset(of: address, in: segment) else { return nil }
        // The segment's size is the header's word; the file's own size bounds what is read
        // (and allocated), so a crafted size cannot ask for exabytes.
        var info = stat()
        guard fstat(fd, &info) == 0, UInt64(info.st_size) > offset else { return nil }
        let available = min(segment.fileSize - (address - segment.virtualAddress), UInt64(info.st_size) - offset)
        var buffer = [UInt8](repeating: 0, count: Int(min(UInt64(count), available)))
        var filled = 0
        while filled < buffer.count {
            let got = buffer.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + filled, raw.count - filled, off_t(offset) + off_t(filled))
            }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { return nil }
            filled += got
        }
        return buffer
    }

    func segment(containing address: UInt64) -> LoadSegment? {
        segments.first { address >= $0.virtualAddress && address - $0.virtualAddress < $0.fileSize }
    }

    /// The file offset of `address` (inside `segment`), nil past what `off_t` holds: the
    /// header fields are the file's, and a crafted one must not trap the arithmetic.
    private static func fileOffset(of address: UInt64, in segment: LoadSegment) -> UInt64? {
        let (offset, overflow) = segment.fileOffset.addingReportingOverflow(address - segment.virtualAddress)
        return overflow || offset > UInt64(off_t.max) ? nil : offset
    }

    /// Function names close to `name`, for "did you mean" hints: names containing it
    /// (shortest first), then names within a small edit distance (closest first); ties
    /// are broken alphabetically.
    public func suggestions(for name: String, limit: Int = 5) -> [String] {
        Self.suggestions(for: name, among: byName.keys, limit: limit)
    }

    /// `suggestions(for:limit:)` over any set of names (e.g. demangled ones).
    public static func suggestions<Names: Sequence<String>>(for name: String, among names: Names,
                                                              limit: Int = 5) -> [String] {
        let query = Array(name.lowercased().utf8)
        guard !query.isEmpty, limit > 0 else { return [] }
        let maxDistance = max(2, query.count / 3)
        var containing: [String] = []
        var near: [(distance: Int, name: String)] = []
        for candidate in names where candidate != name {
            let lowered = Array(candidate.lowercased().utf8)
            if lowered.count > query.count, containsBytes(lowered, query) {
                containing.append(candidate)
            } else if abs(lowered.count - query.count) <= maxDistance {
                let distance = editDistance(query, lowered)
                if distance <= maxDistance { near.append((distance, candidate)) }
            }
        }
        containing.sort { ($0.utf8.count, $0) < ($1.utf8.count, $1) }
        near.sort { ($0.distance, $0.name) < ($1.distance, $1.name) }
        return Array((containing + near.map(\.name)).prefix(limit))
    }
}

private func containsBytes(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    return (0...(haystack.count - needle.count)).contains { start in
        haystack[start..<(start + needle.count)].elementsEqual(needle)
    }
}

/// Levenshtein distance, one row at a time.
private func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var previous = Array(0...b.count)
    var current = previous
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
            current[j] = min(substitution, previous[j] + 1, current[j - 1] + 1)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}

/// What `ELFImage` keeps of a file, read through libelf in one pass.
private struct Contents {
    var isSharedObject = false
    var functions: [ELFSymbol] = []
    var segments: [LoadSegment] = []
    var needed: [String] = []
    var importedFunctions = Set<String>()
    var interpreter: String?
    var runPaths: [String] = []
    var hasSymtab = false
    var buildID: [UInt8] = []
    var debugLink: DebugFiles.Link?
    /// `.gnu_debugdata`, still compressed.
    var miniDebugInfo: [UInt8]?
    /// See `SymbolReader.primaryNames`.
    var primaryNames = Set<String>()

    /// Adds the functions of a separate debug file (one per name and address).
    mutating func addFunctions(of debug: Contents) {
        var seen = Set(functions.map { "\($0.address) \($0.name)" })
        functions += debug.functions.filter { seen.insert("\($0.address) \($0.name)").inserted }
        functions.sort { ($0.address, $0.name) < ($1.address, $1.name) }
        primaryNames.formUnion(debug.primaryNames)
    }

    /// NT_GNU_BUILD_ID (3) from a note section, owner "GNU".
    mutating func readBuildID(_ data: UnsafeMutablePointer<Elf_Data>) {
        if let id = elfNotes(in: data, owner: "GNU", type: 3).first { buildID = Array(id) }
    }

    private static let libelfReady: Bool = elf_version(UInt32(EV_CURRENT)) != UInt32(EV_NONE)

    static func read(fd: Int32, path: String) throws(UtapError) -> Contents {
        guard libelfReady, let elf = elf_begin(fd, ELF_C_READ_MMAP, nil) else {
            throw readFailure("file", path: path)
        }
        defer { elf_end(elf) }
        return try read(elf: elf, path: path)
    }

    /// The ELF file MiniDebugInfo compresses into `.gnu_debugdata`; nil when the section
    /// does not hold one.
    static func read(miniDebugInfo compressed: [UInt8]) -> Contents? {
        var bytes: UnsafeMutablePointer<UInt8>?
        var size = 0
        // Fedora's are tens of KiB: 256 MiB is only a bound against a hostile file.
        guard utap_xz_decompress(compressed, compressed.count, 256 << 20, &bytes, &size) == 0, let bytes else {
            return nil
        }
        defer { free(bytes) }
        guard libelfReady, let elf = UnsafeMutableRawPointer(bytes).withMemoryRebound(
            to: CChar.self, capacity: size, { elf_memory($0, size) }) else { return nil }
        defer { elf_end(elf) }
        return try? read(elf: elf, path: ".gnu_debugdata")
    }

    private static func readFailure(_ what: String, path: String) -> UtapError {
        .usage("'\(path)': cannot read ELF \(what): \(String(cString: elf_errmsg(-1)))")
    }

    private static func read(elf: OpaquePointer, path: String) throws(UtapError) -> Contents {
        func failure(_ what: String) -> UtapError { readFailure(what, path: path) }
        var contents = Contents()
        var header = GElf_Ehdr()
        guard gelf_getehdr(elf, &header) != nil else { throw failure("header") }
        contents.isSharedObject = header.e_type == UInt16(ET_DYN)

        var count = 0
        guard elf_getphdrnum(elf, &count) == 0 else { throw failure("program headers") }
        for index in 0..<count {
            var phdr = GElf_Phdr()
            guard gelf_getphdr(elf, Int32(index), &phdr) != nil else { throw failure("program headers") }
            if phdr.p_type == UInt32(PT_INTERP), phdr.p_filesz < 4096,
               let data = elf_getdata_rawchunk(elf, Int64(phdr.p_offset), Int(phdr.p_filesz), ELF_T_BYTE),
               let bytes = data.pointee.d_buf {
                let text = UnsafeRawBufferPointer(start: bytes, count: data.pointee.d_size)
                contents.interpreter = String(decoding: text.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard phdr.p_type == UInt32(PT_LOAD) else { continue }
            contents.segments.append(LoadSegment(
                virtualAddress: phdr.p_vaddr, memorySize: phdr.p_memsz,
                fileOffset: phdr.p_offset, fileSize: phdr.p_filesz,
                isExecutable: phdr.p_flags & UInt32(PF_X) != 0))
        }

        var sectionNames = 0
        if elf_getshdrstrndx(elf, &sectionNames) != 0 { sectionNames = 0 }
        var tables: [(data: UnsafeMutablePointer<Elf_Data>, shdr: GElf_Shdr)] = []
        var versions: UnsafeMutablePointer<Elf_Data>?
        var section = elf_nextscn(elf, nil)
        while let scn = section {
            section = elf_nextscn(elf, scn)
            var shdr = GElf_Shdr()
            guard gelf_getshdr(scn, &shdr) != nil, let data = elf_getdata(scn, nil) else { continue }
            switch Int32(bitPattern: shdr.sh_type) {
            case SHT_SYMTAB, SHT_DYNSYM:
                tables.append((data, shdr))
            case SHT_GNU_versym:
                versions = data
            case SHT_DYNAMIC:
                contents.readDynamic(elf: elf, data: data, shdr: shdr)
            case SHT_NOTE:
                contents.readBuildID(data)
            case SHT_PROGBITS:
                guard sectionNames != 0, let name = elf_strptr(elf, sectionNames, Int(shdr.sh_name)),
                      let bytes = data.pointee.d_buf else { break }
                let section = UnsafeRawBufferPointer(start: bytes, count: data.pointee.d_size)
                if strcmp(name, ".gnu_debuglink") == 0 {
                    contents.debugLink = DebugFiles.parseLink(section)
                } else if strcmp(name, ".gnu_debugdata") == 0 {
                    contents.miniDebugInfo = Array(section)
                }
            default:
                break
            }
        }
        var reader = SymbolReader()
        for table in tables {
            let isSymtab = Int32(bitPattern: table.shdr.sh_type) == SHT_SYMTAB
            contents.hasSymtab = contents.hasSymtab || isSymtab
            reader.read(elf: elf, data: table.data, shdr: table.shdr, isSymtab: isSymtab, versions: isSymtab ? nil : versions)
        }
        contents.functions = reader.result().sorted { ($0.address, $0.name) < ($1.address, $1.name) }
        contents.primaryNames = reader.primaryNames
        contents.importedFunctions = reader.imported
        return contents
    }

    /// Collects functions from symbol tables, one per (name, address).
    private struct SymbolReader {
        private struct Key: Hashable {
            var name: String
            var address: UInt64
        }

        private var seen = Set<Key>()
        private var functions: [ELFSymbol] = []
        /// Names seen at least once bound global or local, in their default version: the
        /// ones to show among aliases (`free`, not its old-version alias `cfree`; `strchr`,
        /// not its weak alias `index`).
        private(set) var primaryNames = Set<String>()
        /// Undefined functions of a `.dynsym`: see `ELFImage.importedFunctions`.
        private(set) var imported = Set<String>()
        /// Non-default versions (`memcpy@GLIBC_2.2.5` beside `memcpy@@GLIBC_2.14`): kept
        /// only for names that have no default version, so a plain name means what a
        /// program linked today would call.
        private var hidden: [ELFSymbol] = []

        /// `versions` is the `.gnu.version` table that parallels a `.dynsym`.
        mutating func read(elf: OpaquePointer, data: UnsafeMutablePointer<Elf_Data>, shdr: GElf_Shdr,
                           isSymtab: Bool, versions: UnsafeMutablePointer<Elf_Data>?) {
            guard shdr.sh_entsize > 0 else { return }
            for index in 0..<Int32(shdr.sh_size / shdr.sh_entsize) {
                var sym = GElf_Sym()
                guard gelf_getsym(data, index, &sym) != nil else { continue }
                // GELF_ST_TYPE is a macro Swift cannot import: the type is the low nibble.
                let type = Int32(sym.st_info & 0xF)
                if type == STT_FUNC, sym.st_shndx == UInt16(SHN_UNDEF), !isSymtab,
                   let raw = elf_strptr(elf, Int(shdr.sh_link), Int(sym.st_name)) {
                    imported.insert(String(cString: raw))
                    continue
                }
                guard type == STT_FUNC || type == STT_GNU_IFUNC,
                      sym.st_shndx != UInt16(SHN_UNDEF), sym.st_value != 0,
                      let raw = elf_strptr(elf, Int(shdr.sh_link), Int(sym.st_name)) else { continue }
                // .symtab names may carry "@VERSION" (not the default) / "@@VERSION".
                let full = String(cString: raw)
                let name = String(full.prefix { $0 != "@" })
                let nonDefault = name.count < full.utf8.count && !full.contains("@@")
                guard !name.isEmpty else { continue }
                // GELF_ST_BIND: the high nibble; 2 is STB_WEAK.
                var version = GElf_Versym()
                // 0x8000 is VERSYM_HIDDEN: not the default version of the name.
                let hiddenVersion = nonDefault || (versions.map { gelf_getversym($0, index, &version) != nil } ?? false && version & 0x8000 != 0)
                if sym.st_info >> 4 != 2 && !hiddenVersion { primaryNames.insert(name) }
                guard seen.insert(Key(name: name, address: sym.st_value)).inserted else { continue }
                let symbol = ELFSymbol(name: name, address: sym.st_value, size: sym.st_size,
                                       isIFunc: type == STT_GNU_IFUNC)
                if hiddenVersion {
                    hidden.append(symbol)
                } else {
                    functions.append(symbol)
                }
            }
        }

        func result() -> [ELFSymbol] {
            let names = Set(functions.map(\.name))
            return functions + hidden.filter { !names.contains($0.name) }
        }
    }

    private mutating func readDynamic(elf: OpaquePointer, data: UnsafeMutablePointer<Elf_Data>,
                                      shdr: GElf_Shdr) {
        guard shdr.sh_entsize > 0 else { return }
        var runPath: [String]?
        var rPath: [String]?
        for index in 0..<Int32(shdr.sh_size / shdr.sh_entsize) {
            var dyn = GElf_Dyn()
            guard gelf_getdyn(data, index, &dyn) != nil, dyn.d_tag != Int64(DT_NULL) else { break }
            let string = { () -> String? in
                // A crafted offset past Int.max names no string rather than trapping.
                Int(exactly: dyn.d_un.d_val).flatMap { elf_strptr(elf, Int(shdr.sh_link), $0) }.map { String(cString: $0) }
            }
            switch dyn.d_tag {
            case Int64(DT_NEEDED):
                string().map { needed.append($0) }
            case Int64(DT_RUNPATH):
                runPath = string().map(Self.splitPath)
            case Int64(DT_RPATH):
                rPath = string().map(Self.splitPath)
            default:
                break
            }
        }
        runPaths = runPath ?? rPath ?? []
    }

    private static func splitPath(_ value: String) -> [String] {
        value.split(separator: ":").map(String.init)
    }
}
