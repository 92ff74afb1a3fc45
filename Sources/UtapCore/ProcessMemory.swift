import Glibc

/// Reads other processes' memory through /proc/PID/mem, keeping one descriptor per
/// process. Used where BPF could not read (a page not faulted in yet).
public final class ProcessMemory {
    private var files: [Int32: Int32] = [:]

    public init() {}

    deinit { files.values.forEach { close($0) } }

    /// The NUL-terminated string at `address`, at most `maxLength` bytes of it; nil when
    /// the memory cannot be read. `truncated` when no NUL came within the limit.
    public func string(pid: Int32, address: UInt64, maxLength: Int) -> (bytes: [UInt8], truncated: Bool)? {
        guard address != 0, let fd = descriptor(pid) else { return nil }
        return Self.string(fd: fd, at: address, maxLength: maxLength)
    }

    /// The same, at `offset` in the file at `path`: a string of a read-only mapping of a
    /// process that is gone.
    public static func string(file path: String, at offset: UInt64, maxLength: Int) -> (bytes: [UInt8], truncated: Bool)? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return string(fd: fd, at: offset, maxLength: maxLength)
    }

    private static func string(fd: Int32, at offset: UInt64, maxLength: Int) -> (bytes: [UInt8], truncated: Bool)? {
        var result: [UInt8] = []
        var at = offset
        // Page by page: a string may end just before an unmapped page.
        while result.count < maxLength {
            let pageLeft = 4096 - Int(at & 4095)
            var chunk = [UInt8](repeating: 0, count: min(pageLeft, maxLength - result.count + 1))
            let n = pread(fd, &chunk, chunk.count, off_t(Int64(bitPattern: at)))
            if n <= 0 { return result.isEmpty ? nil : (result, true) }
            if let nul = chunk[0..<n].firstIndex(of: 0) {
                result.append(contentsOf: chunk[0..<nul])
                return (Array(result.prefix(maxLength)), result.count > maxLength)
            }
            result.append(contentsOf: chunk[0..<n])
            at += UInt64(n)
        }
        return (Array(result.prefix(maxLength)), true)
    }

    /// `size` bytes (1…8) at `address`, little-endian, zero-extended; nil when unreadable.
    public func integer(pid: Int32, address: UInt64, size: Int) -> UInt64? {
        guard let fd = descriptor(pid) else { return nil }
        var value: UInt64 = 0
        let count = min(max(size, 1), 8)
        let got = pread(fd, &value, count, off_t(Int64(bitPattern: address)))
        return got == count ? UInt64(littleEndian: value) : nil
    }

    /// Closes the descriptor of `pid`: after an exec it reads the old address space.
    public func forget(pid: Int32) {
        if let fd = files.removeValue(forKey: pid) { close(fd) }
    }

    private func descriptor(_ pid: Int32) -> Int32? {
        if let fd = files[pid] { return fd }
        let fd = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        files[pid] = fd
        return fd
    }
}
