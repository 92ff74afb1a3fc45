// Shared by every harness (compiled into each one by fuzz/fuzz.mk).
import Glibc

/// One in-memory file, rewritten for every input, for the parsers that only take a path
/// (they open, fstat and mmap it as they would a real ELF file). It is unlinked and lives
/// in the /dev/shm tmpfs, which keeps the disk out of a loop that runs millions of times
/// (Swift's Glibc does not import memfd_create); its /proc/self/fd path opens like any file.
final class ScratchFile {
    private let fd: Int32
    let path: String

    init() {
        var template = Array("/dev/shm/utap-fuzz-XXXXXX".utf8CString)
        fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        precondition(fd >= 0, "cannot create a file in /dev/shm: \(String(cString: strerror(errno)))")
        unlink(template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        path = "/proc/self/fd/\(fd)"
    }

    /// Replaces the file's contents with `contents`.
    func write(_ contents: [UInt8]) {
        precondition(ftruncate(fd, 0) == 0, "ftruncate failed")
        let written = contents.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        precondition(written == contents.count, "short write to the scratch file")
    }
}
