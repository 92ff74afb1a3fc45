import Glibc

/// Where the separate debug file of a stripped ELF file may be, in the order gdb and perf
/// look: by build ID (`DIR/.build-id/ab/cdef….debug`), then by its `.gnu_debuglink` name
/// next to the file, in `.debug/` beside it, and under `DIR/` + the file's directory.
/// DIR is each of `directories` (`UTAP_DEBUG_DIR`, colon-separated; default
/// `/usr/lib/debug`, where Debian's `-dbgsym` packages install).
///
/// A candidate is only a place to look: the caller takes it only if it `matches`: the same
/// build ID when both files have one, else the CRC32 the debug link records.
enum DebugFiles {
    struct Link: Equatable {
        var name: String
        var crc: UInt32
    }

    struct Candidate: Equatable {
        var path: String
        /// Checked by the CRC of the whole file (a debug link, and the file has no build ID).
        var crc: UInt32?
    }

    static var directories: [String] {
        let value = getenv("UTAP_DEBUG_DIR").map { String(cString: $0) } ?? "/usr/lib/debug"
        return value.split(separator: ":").map(String.init)
    }

    /// The places to look for the debug file of `path`. A file reached through a process's
    /// root (`/proc/PID/root/…`, a container) has its debug files under that same root.
    static func candidates(for path: String, buildID: [UInt8], link: Link?,
                           directories: [String] = directories) -> [Candidate] {
        let (root, inRoot) = splitProcRoot(path)
        var result: [Candidate] = []
        if buildID.count >= 2 {
            let hex = buildID.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }
            for directory in directories {
                result.append(Candidate(path: "\(root)\(directory)/.build-id/\(hex[0])/\(hex.dropFirst().joined()).debug", crc: nil))
            }
        }
        if let link, !link.name.isEmpty, !link.name.contains("/") {
            let crc = buildID.isEmpty ? link.crc : nil
            let directory = String(inRoot[..<(inRoot.lastIndex(of: "/") ?? inRoot.startIndex)])
            result.append(Candidate(path: "\(root)\(directory)/\(link.name)", crc: crc))
            result.append(Candidate(path: "\(root)\(directory)/.debug/\(link.name)", crc: crc))
            for debugDirectory in directories {
                result.append(Candidate(path: "\(root)\(debugDirectory)\(directory)/\(link.name)", crc: crc))
            }
        }
        // The file itself can be its own link target (`name` == its own name): never.
        return result.filter { $0.path != path }
    }

    /// `/proc/42/root/usr/bin/x` -> ("/proc/42/root", "/usr/bin/x"); other paths -> ("", path).
    static func splitProcRoot(_ path: String) -> (root: String, rest: String) {
        let parts = path.split(separator: "/", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[1] == "proc", parts[2].allSatisfy(\.isNumber),
              parts[3].hasPrefix("root/") else { return ("", path) }
        return ("/proc/\(parts[2])/root", String(parts[3].dropFirst(4)))
    }

    /// `.gnu_debuglink`'s contents: a NUL-terminated file name, padding to 4 bytes, and the
    /// CRC32 of the debug file (little-endian on x86-64).
    static func parseLink(_ bytes: UnsafeRawBufferPointer) -> Link? {
        guard let end = bytes.firstIndex(of: 0) else { return nil }
        let crcOffset = (end + 4) & ~3
        guard crcOffset + 4 <= bytes.count else { return nil }
        let name = String(decoding: bytes[..<end], as: UTF8.self)
        return Link(name: name, crc: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: crcOffset, as: UInt32.self)))
    }

    /// The CRC-32 (the one of zlib and `.gnu_debuglink`) of the file's bytes; nil when it
    /// cannot be read.
    static func crc32(ofFile path: String) -> UInt32? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var crc: UInt32 = 0xFFFF_FFFF
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { chunk.deallocate() }
        while true {
            let got = read(fd, chunk.baseAddress, chunk.count)
            if got < 0 && errno == EINTR { continue }
            guard got >= 0 else { return nil }
            if got == 0 { return ~crc }
            for byte in chunk.prefix(got) {
                crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
            }
        }
    }

    /// The reflected polynomial 0xEDB88320, a byte at a time.
    private static let crcTable: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }
}
