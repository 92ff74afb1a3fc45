import Glibc

/// Turns a probe TARGET that names a library ("libc", "libssl.so.3") into a file path:
/// the file the traced process has mapped when there is one, else the file the dynamic
/// linker would load for the executable.
public enum LibraryResolver {
    /// A name containing '/' is a path and is returned as given.
    public static func resolve(_ name: String, pid: Int32?, executable: String?) throws(UtapError) -> String {
        if name.contains("/") { return name }
        if let pid { return try mapped(name, pid: pid) }
        return try onDisk(name, executable: executable)
    }

    /// How well file name `file` matches library name `name`: lower is better, nil is no
    /// match. "libc" matches "libc.so.6"; "libgtk" matches "libgtk-3.so.0".
    static func rank(of file: String, for name: String) -> Int? {
        if file == name { return 0 }
        if file == name + ".so" { return 1 }
        if file.hasPrefix(name + ".so.") { return 2 }
        if file.hasPrefix(name + "-") && file.contains(".so") { return 3 }
        return nil
    }

    /// The best-ranked of `candidates` (earlier wins ties) that `accept` takes.
    private static func best<T>(_ candidates: [T], name: String, fileName: (T) -> String,
                                accept: (T) -> Bool = { _ in true }) -> T? {
        candidates.enumerated()
            .compactMap { item in rank(of: fileName(item.element), for: name).map { (rank: $0, index: item.offset) } }
            .sorted { ($0.rank, $0.index) < ($1.rank, $1.index) }
            .lazy.map { candidates[$0.index] }
            .first(where: accept)
    }

    // MARK: In a process

    private static func mapped(_ name: String, pid: Int32) throws(UtapError) -> String {
        let files = try ProcMaps.read(pid: pid).filter(\.isFile)
        guard let entry = best(files, name: name, fileName: { lastPathComponent($0.path) }) else {
            var libraries: [String] = []
            for file in files.map({ lastPathComponent($0.path) }) where file.contains(".so") && !libraries.contains(file) {
                libraries.append(file)
            }
            throw .usage("library '\(name)': not mapped by pid \(pid)",
                           hint: libraries.isEmpty ? "it maps no shared libraries"
                               : "it maps \(libraries.prefix(5).joined(separator: ", "))")
        }
        // Through /proc the file is the one the process sees, even in another mount
        // namespace; a deleted file is reachable only through map_files.
        if entry.isDeleted {
            return "/proc/\(pid)/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
        }
        return "/proc/\(pid)/root" + entry.path
    }

    // MARK: On disk, as ld.so would search

    static let defaultDirectories = [
        "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
    ]

    private static func onDisk(_ name: String, executable: String?) throws(UtapError) -> String {
        var directories = executable.map(runPathDirectories) ?? []
        directories += (getenv("LD_LIBRARY_PATH").map { String(cString: $0) } ?? "")
            .split(separator: ":").map(String.init)
        if let found = search(name, in: directories) { return found }
        if case .success(let bytes) = readFileBytes("/etc/ld.so.cache"),
           let found = best(parseLDCache(bytes), name: name, fileName: \.soname,
                            accept: { ELFImage.isNativeELF($0.path) }) {
            return found.path
        }
        if let found = search(name, in: defaultDirectories) { return found }
        throw .usage("library '\(name)': not found",
                     hint: "give the full path, or run with -p PID")
    }

    /// The executable's RUNPATH (or RPATH) with `$ORIGIN` expanded; empty when it cannot
    /// be read (a script, say): the other places are still searched.
    private static func runPathDirectories(_ executable: String) -> [String] {
        guard let image = try? ELFImage.open(executable) else { return [] }
        let origin = directoryName(realPath(executable) ?? executable)
        return image.runPaths.map {
            $0.replacing("${ORIGIN}", with: origin).replacing("$ORIGIN", with: origin)
        }
    }

    private static func search(_ name: String, in directories: [String]) -> String? {
        for directory in directories where !directory.isEmpty {
            let files = directoryListing(directory).sorted()
            let prefix = directory.hasSuffix("/") ? directory : directory + "/"
            if let file = best(files, name: name, fileName: { $0 },
                               accept: { ELFImage.isNativeELF(prefix + $0) }) {
                return prefix + file
            }
        }
        return nil
    }

    /// One usable entry of `/etc/ld.so.cache`.
    struct CacheEntry: Equatable {
        var soname: String
        var path: String
    }

    /// The x86-64 libc6 entries of an `ld.so.cache` in the "glibc-ld.so.cache1.1" format
    /// (also found after an old "ld.so-1.7.0" table, as glibc before 2.32 wrote it).
    static func parseLDCache(_ bytes: [UInt8]) -> [CacheEntry] {
        func u32(_ at: Int) -> UInt32? {
            guard at >= 0, at + 4 <= bytes.count else { return nil }
            return (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) }
        }
        func string(_ at: Int) -> String? {
            guard at >= 0, at < bytes.count, let end = bytes[at...].firstIndex(of: 0) else { return nil }
            return String(decoding: bytes[at..<end], as: UTF8.self)
        }
        var base = 0
        if bytes.starts(with: Array("ld.so-1.7.0".utf8)) {
            // Header of 16 bytes, 12-byte entries, then the new table aligned to 8.
            guard let oldCount = u32(12) else { return [] }
            base = (16 + Int(oldCount) * 12 + 7) & ~7
        }
        let magic = Array("glibc-ld.so.cache1.1".utf8)
        guard bytes.count >= base + 48, bytes[base..<(base + magic.count)].elementsEqual(magic),
              let count = u32(base + 20) else { return [] }
        // Entries: int32 flags, uint32 key, uint32 value, uint32 osversion, uint64 hwcap;
        // key and value are string offsets from the start of this table.
        let libc6X8664: UInt32 = 0x0303
        return (0..<Int(count)).compactMap { index in
            let at = base + 48 + index * 24
            guard let flags = u32(at), flags & 0xFFFF == libc6X8664,
                  let key = u32(at + 4), let value = u32(at + 8),
                  let soname = string(base + Int(key)), let path = string(base + Int(value))
            else { return nil }
            return CacheEntry(soname: soname, path: path)
        }
    }
}

func directoryName(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// Names in `directory` (without "." and ".."); empty when it cannot be read.
func directoryListing(_ directory: String) -> [String] {
    guard let handle = opendir(directory) else { return [] }
    defer { closedir(handle) }
    var names: [String] = []
    while let entry = readdir(handle) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
