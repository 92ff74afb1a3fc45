import Glibc

/// Turns a probe TARGET that names a library ("libc", "libssl.so.3") into a file path:
/// the file the traced process has mapped when there is one, else the file the dynamic
/// linker would load for the executable (for a process that has not loaded it yet, as it
/// would: its RUNPATH, LD_LIBRARY_PATH and ld.so.cache, inside its root).
public enum LibraryResolver {
    /// A name containing '/' is a path and is returned as given.
    public static func resolve(_ name: String, pid: Int32?, executable: String?) throws(UtapError) -> String {
        try locate(name, pid: pid, executable: executable).path
    }

    /// `resolve`, and whether process `pid` has the file mapped: false for a library it
    /// has not loaded (yet), whose probes fire once it does (dlopen).
    public static func locate(_ name: String, pid: Int32?, executable: String?) throws(UtapError) -> (path: String, loaded: Bool) {
        if name.contains("/") { return (name, true) }
        guard let pid else { return (try onDisk(name, executable: executable), true) }
        let files = try ProcMaps.read(pid: pid).filter(\.isFile)
        if let entry = best(files, name: name, fileName: { lastPathComponent($0.path) }) {
            return (openablePath(of: entry, pid: pid), true)
        }
        do {
            return (try onDisk(name, executable: "/proc/\(pid)/exe", root: "/proc/\(pid)/root",
                               libraryPath: processLibraryPath(pid)), false)
        } catch {
            // Names like the one asked for first, then the shortest (libc.so.6, libm.so.6):
            // maps order depends on where each library happened to be mapped.
            let mapped = Set(files.map { lastPathComponent($0.path) }.filter { $0.contains(".so") })
            let near = ELFImage.suggestions(for: name, among: mapped.sorted())
            let shortest = mapped.subtracting(near).sorted { ($0.utf8.count, $0) < ($1.utf8.count, $1) }
            let shown = Array((near + shortest).prefix(5))
            throw .usage("library '\(name)': not mapped by pid \(pid), nor found where it would load it from",
                         hint: shown.isEmpty ? "it maps no shared libraries" : "it maps \(shown.joined(separator: ", "))")
        }
    }

    /// LD_LIBRARY_PATH of a running process, from its initial environment.
    private static func processLibraryPath(_ pid: Int32) -> [String] {
        guard case .success(let bytes) = readFileBytes("/proc/\(pid)/environ") else { return [] }
        let prefix = Array("LD_LIBRARY_PATH=".utf8)
        guard let entry = bytes.split(separator: 0).first(where: { $0.starts(with: prefix) }) else { return [] }
        return String(decoding: entry.dropFirst(prefix.count), as: UTF8.self).split(separator: ":").map(String.init)
    }

    /// How well file name `file` matches library name `name`: lower is better, nil is no
    /// match. "libc" matches "libc.so.6"; "libgtk" matches "libgtk-3.so.0"; a SONAME
    /// matches the file its link names ("libz.so.1", "libz.so.1.2.13": a process's maps
    /// show the file, not the link).
    static func rank(of file: String, for name: String) -> Int? {
        if file == name { return 0 }
        if file == name + ".so" { return 1 }
        if file.hasPrefix(name + ".so.") { return 2 }
        if name.contains(".so."), file.hasPrefix(name + ".") { return 2 }
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

    /// A path through which utap opens the very file `entry` maps, whatever mount
    /// namespace or root the process has.
    ///
    /// The kernel prints a maps path relative to the *reader's* root: for a process in
    /// another mount namespace that is the path it sees itself, but for a chrooted process
    /// (a container runtime that chroots rather than pivots, a build sandbox) the path
    /// starts with the chroot directory, which `/proc/PID/root` already is. So the
    /// candidates are `/proc/PID/root` + the path, then + the path without the root's own
    /// prefix; each is taken only when it is the mapped inode. Otherwise (also for a
    /// deleted or replaced file) `/proc/PID/map_files/START-END`, which names the mapped
    /// file itself but needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) to follow.
    static func openablePath(of entry: MapEntry, pid: Int32) -> String {
        let mapFiles = "/proc/\(pid)/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
        if entry.isDeleted { return mapFiles }
        let root = "/proc/\(pid)/root"
        var candidates = [root + entry.path]
        if let rootPath = readLink(root), rootPath != "/", entry.path.hasPrefix(rootPath + "/") {
            candidates.append(root + entry.path.dropFirst(rootPath.count))
        }
        if let same = candidates.first(where: { isRegularFile($0, inode: entry.inode) }) { return same }
        if isRegularFile(mapFiles, inode: nil) { return mapFiles }
        // Unprivileged and unverified: the best guess, whose failure names a readable path.
        return candidates[0]
    }

    /// The file a path names for process `pid`, as utap can open it: the path as the
    /// process sees it (relative: to utap's working directory), through `/proc/PID/root`.
    /// When the process maps a file by that path, or by the path its symlinks lead to
    /// (`libz.so` -> `libz.so.1` -> `libz.so.1.2.13`), only as deleted (removed, or
    /// replaced by a rebuild or a package upgrade, since it was mapped), the mapped file,
    /// through map_files: that is the code it runs. Paths under `/proc/` are returned as
    /// given.
    public static func pathInProcess(_ path: String, pid: Int32) -> String {
        if path.hasPrefix("/proc/") { return path }
        let absolute = path.hasPrefix("/") ? path : currentDirectory() + "/" + path
        let root = "/proc/\(pid)/root"
        if let entries = try? ProcMaps.read(pid: pid) {
            var paths = [absolute]
            if let resolved = realPath(root + absolute), let rootPath = realPath(root) {
                let inProcess = rootPath == "/" ? resolved
                    : resolved.hasPrefix(rootPath + "/") ? String(resolved.dropFirst(rootPath.count)) : nil
                if let inProcess, inProcess != absolute { paths.append(inProcess) }
            }
            // Maps paths of a chrooted process start with its root (see openablePath).
            let rootPrefix = readLink(root).flatMap { $0 == "/" ? nil : $0 }
            let names = paths + (rootPrefix.map { prefix in paths.map { prefix + $0 } } ?? [])
            let same = entries.filter { $0.isFile && names.contains($0.path) }
            if let deleted = same.first(where: \.isDeleted), !same.contains(where: { !$0.isDeleted }) {
                return openablePath(of: deleted, pid: pid)
            }
        }
        return root + absolute
    }

    // MARK: On disk, as ld.so would search

    static let defaultDirectories = [
        "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
    ]

    /// Where ld.so would find `name` for `executable`; `root` is prefixed to every place
    /// (the root of a process that has not loaded it), `libraryPath` is LD_LIBRARY_PATH.
    /// Where the dynamic loader finds `name`, a DT_NEEDED entry of `object`: its RUNPATH,
    /// then LD_LIBRARY_PATH (utap's, which a COMMAND inherits), ld.so.cache and the default
    /// directories. Nil when it is nowhere.
    public static func needed(_ name: String, of object: ELFImage) -> String? {
        let origin = directoryName(realPath(object.path) ?? object.path)
        return try? onDisk(name, runPaths: expanded(object.runPaths, origin: origin, root: ""))
    }

    private static func onDisk(_ name: String, executable: String?, root: String = "",
                               libraryPath: [String] = ownLibraryPath) throws(UtapError) -> String {
        try onDisk(name, runPaths: executable.map { runPathDirectories($0, root: root) } ?? [], root: root,
                   libraryPath: libraryPath)
    }

    private static func onDisk(_ name: String, runPaths: [String], root: String = "",
                               libraryPath: [String] = ownLibraryPath) throws(UtapError) -> String {
        var directories = runPaths
        directories += libraryPath.map { root + $0 }
        if let found = search(name, in: directories) { return found }
        if case .success(let bytes) = readFileBytes(root + "/etc/ld.so.cache"),
           let found = best(parseLDCache(bytes), name: name, fileName: \.soname,
                            accept: { ELFImage.isNativeELF(root + $0.path) }) {
            return root + found.path
        }
        if let found = search(name, in: defaultDirectories.map { root + $0 }) { return found }
        throw .usage("library '\(name)': not found",
                     hint: "give the full path, or run with -p PID")
    }

    /// utap's LD_LIBRARY_PATH, which a COMMAND it starts inherits.
    private static var ownLibraryPath: [String] {
        (getenv("LD_LIBRARY_PATH").map { String(cString: $0) } ?? "").split(separator: ":").map(String.init)
    }

    /// The executable's RUNPATH (or RPATH) with `$ORIGIN` expanded, under `root`; empty
    /// when it cannot be read (a script, say): the other places are still searched.
    private static func runPathDirectories(_ executable: String, root: String) -> [String] {
        guard let image = try? ELFImage.open(executable) else { return [] }
        // A process's /proc/PID/exe links to the path it sees, relative to its root.
        let origin = root.isEmpty ? directoryName(realPath(executable) ?? executable)
                                  : directoryName(readLink(executable) ?? "/")
        return expanded(image.runPaths, origin: origin, root: root)
    }

    private static func expanded(_ runPaths: [String], origin: String, root: String) -> [String] {
        runPaths.map { root + $0.replacing("${ORIGIN}", with: origin).replacing("$ORIGIN", with: origin) }
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

/// Whether two paths name one file (device and inode), whatever links lead there.
func isSameFile(_ a: String, _ b: String) -> Bool {
    var first = stat(), second = stat()
    return stat(a, &first) == 0 && stat(b, &second) == 0
        && first.st_dev == second.st_dev && first.st_ino == second.st_ino
}

public func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// Where a symbolic link points; nil when `path` is not one or cannot be read.
func readLink(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let length = readlink(path, &buffer, buffer.count - 1)
    guard length > 0 else { return nil }
    buffer[length] = 0
    return String(cString: buffer)
}

/// Whether `path` is a regular file (following links), with inode number `inode` if given.
func isRegularFile(_ path: String, inode: UInt64?) -> Bool {
    var info = stat()
    guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return false }
    return inode.map { UInt64(info.st_ino) == $0 } ?? true
}

/// Names in `directory` (without "." and ".."); empty when it cannot be read.
func directoryListing(_ directory: String) -> [String] {
    guard let handle = opendir(directory) else { return [] }
    defer { closedir(handle) }
    var names: [String] = []
    while let entry = readdir(handle) {
        let name = entryName(entry)
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// A directory entry's name, read in place: readdir's record can be shorter than
/// `struct dirent` (d_reclen), so copying the whole d_name array reads past it.
public func entryName(_ entry: UnsafeMutablePointer<dirent>) -> String {
    let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    return String(cString: (UnsafeRawPointer(entry) + offset).assumingMemoryBound(to: CChar.self))
}
