import Glibc

/// One line of `/proc/PID/maps`.
public struct MapEntry: Equatable, Sendable {
    public var start: UInt64
    public var end: UInt64
    /// File offset of `start`.
    public var offset: UInt64
    /// E.g. `r-xp`.
    public var perms: String
    /// `major:minor` in hex, as the kernel prints it.
    public var device: String
    public var inode: UInt64
    /// The mapped file, without the kernel's " (deleted)" suffix; a pseudo name such as
    /// `[heap]` or `[vdso]`; empty for anonymous memory.
    public var path: String
    /// The file was deleted or replaced after it was mapped: `path` no longer names it,
    /// `/proc/PID/map_files/START-END` still does.
    public var isDeleted: Bool

    public init(start: UInt64, end: UInt64, offset: UInt64, perms: String, device: String,
                inode: UInt64, path: String, isDeleted: Bool = false) {
        self.start = start
        self.end = end
        self.offset = offset
        self.perms = perms
        self.device = device
        self.inode = inode
        self.path = path
        self.isDeleted = isDeleted
    }

    /// Whether this maps a file (as opposed to anonymous or pseudo memory).
    public var isFile: Bool { inode != 0 && path.hasPrefix("/") }

    public var isExecutable: Bool { perms.dropFirst(2).first == "x" }
}

/// Reading a process's memory map.
public enum ProcMaps {
    /// Parses the text of a maps file; malformed lines are skipped.
    public static func parse(_ text: String) -> [MapEntry] {
        text.split(separator: "\n").compactMap(parseLine)
    }

    public static func read(pid: Int32) throws(UtapError) -> [MapEntry] {
        switch readFileBytes("/proc/\(pid)/maps") {
        case .success(let bytes):
            return parse(String(decoding: bytes, as: UTF8.self))
        case .failure(let failure) where failure.code == ENOENT || failure.code == ESRCH:
            throw .runtime("pid \(pid): no such process")
        case .failure(let failure):
            throw .runtime("pid \(pid): cannot read its memory map: \(failure)",
                           hint: failure.code == EACCES ? "run utap as root" : nil)
        }
    }

    private static let deletedSuffix = " (deleted)"

    /// `start-end perms offset dev inode [path]`, the path being the rest of the line
    /// (it may contain spaces) after the padding.
    private static func parseLine(_ line: Substring) -> MapEntry? {
        var rest = line[...]
        func field() -> Substring? {
            rest = rest.drop { $0 == " " }
            let value = rest.prefix { $0 != " " }
            rest = rest.dropFirst(value.count)
            return value.isEmpty ? nil : value
        }
        guard let range = field(), let perms = field(), let offsetText = field(),
              let device = field(), let inodeText = field() else { return nil }
        let bounds = range.split(separator: "-")
        guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16),
              let end = UInt64(bounds[1], radix: 16), let offset = UInt64(offsetText, radix: 16),
              let inode = UInt64(inodeText) else { return nil }
        var path = String(rest.drop { $0 == " " })
        let isDeleted = path.hasPrefix("/") && path.hasSuffix(deletedSuffix)
        if isDeleted { path.removeLast(deletedSuffix.count) }
        return MapEntry(start: start, end: end, offset: offset, perms: String(perms),
                        device: String(device), inode: inode, path: path, isDeleted: isDeleted)
    }
}

/// A failed system call while reading a file: its errno.
public struct FileReadError: Error, CustomStringConvertible {
    public var code: Int32
    public var description: String { String(cString: strerror(code)) }
}

/// The whole contents of a file, read until EOF (so /proc files, which report size 0,
/// come out whole).
public func readFileBytes(_ path: String) -> Result<[UInt8], FileReadError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(FileReadError(code: errno)) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let got = read(fd, &chunk, chunk.count)
        if got == 0 { return .success(bytes) }
        if got < 0 {
            if errno == EINTR { continue }
            return .failure(FileReadError(code: errno))
        }
        bytes.append(contentsOf: chunk[..<got])
    }
}
