import Glibc

/// Finds the code an `STT_GNU_IFUNC` symbol (glibc's strlen, memcpy, …) stands for. The
/// symbol's address is a resolver that picks an implementation for the CPU at load time,
/// so a probe there would fire once per process, not per call.
public enum IFuncResolver {
    /// The implementation this machine's dynamic linker picks, asked of the linker in this
    /// very process. That works only when utap has the same file loaded (libc, say) and
    /// assumes the traced process runs on the same CPU with the same glibc tunables.
    /// When the file has no symbol starting at the implementation (a `.symtab`-less
    /// library), the result keeps the IFUNC's name, at the implementation's address, with
    /// size 0. Symbols that are not IFUNCs are returned unchanged.
    public static func implementation(of symbol: ELFSymbol, in image: ELFImage) throws(UtapError) -> ELFSymbol {
        guard symbol.isIFunc else { return symbol }
        if let address = boundAddress(of: symbol, in: image) {
            if let function = image.enclosingFunction(of: address), function.address == address {
                return function
            }
            return ELFSymbol(name: symbol.name, address: address, size: 0)
        }
        var candidates: [String] = []
        // Other names at the IFUNC's address are its resolver, not implementations.
        for function in image.functions where function.address != symbol.address && !function.isIFunc
            && function.name.contains(symbol.name) && !candidates.contains(function.name) {
            candidates.append(function.name)
        }
        throw .usage("'\(symbol.name)' in \(image.path) is an IFUNC: the implementation depends on the process",
                     hint: candidates.isEmpty
                         ? "the file names none of its implementations; probe a function that calls it"
                         : "probe one of them by name: \(candidates.sorted().prefix(8).joined(separator: ", "))")
    }

    /// The ELF virtual address the dynamic linker of this process bound `symbol` to, or nil
    /// when the file is not loaded here.
    private static func boundAddress(of symbol: ELFSymbol, in image: ELFImage) -> UInt64? {
        // RTLD_NOLOAD never loads (or runs) anything: glibc matches the file by device and
        // inode against what is loaded, whatever path names it.
        guard let handle = dlopen(image.path, RTLD_NOLOAD | RTLD_LAZY) else { return nil }
        defer { dlclose(handle) }
        // For an IFUNC, dlsym runs the resolver and returns the implementation. A local
        // alias (glibc's `__GI_memcpy`) is not exported: an exported name of the same
        // resolver is asked instead.
        let aliases = image.functions.filter { $0.isIFunc && $0.address == symbol.address && $0.name != symbol.name }
        guard let runtime = ([symbol] + aliases).lazy.compactMap({ dlsym(handle, $0.name) }).first else { return nil }
        // Where that code lies in the file, through this process's own mappings (Glibc's
        // module does not import dladdr). It must be executable code of this same file.
        let runtimeAddress = UInt64(UInt(bitPattern: runtime))
        guard let maps = try? ProcMaps.read(pid: getpid()),
              let entry = maps.first(where: { $0.start <= runtimeAddress && runtimeAddress < $0.end }),
              entry.isFile, isSameFile(entry.path, image.path) else { return nil }
        let fileOffset = runtimeAddress - entry.start + entry.offset
        guard let segment = image.segments.first(where: {
            $0.isExecutable && fileOffset >= $0.fileOffset && fileOffset - $0.fileOffset < $0.fileSize
        }) else { return nil }
        return fileOffset - segment.fileOffset + segment.virtualAddress
    }
}
