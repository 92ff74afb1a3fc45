import CUtapSys
import Glibc

/// The effective capabilities of this process, read from /proc/self/status.
public struct Capabilities: Sendable {
    public static let dacReadSearch = 2
    public static let kill = 5
    public static let sysPtrace = 19
    public static let sysAdmin = 21
    public static let perfmon = 38
    public static let bpf = 39
    public static let checkpointRestore = 40

    /// What a tracing session still needs once its probes are attached: reading other
    /// processes' memory and maps (late strings, symbols, the ptrace tracer's own
    /// /proc/PID/mem after an exec), reading their files, map_files links of deleted files,
    /// and passing a signal on to the command. Everything else (CAP_BPF, CAP_PERFMON,
    /// CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, CAP_SETUID, ...) goes.
    public static let keptAfterAttach = [dacReadSearch, kill, sysPtrace, checkpointRestore]

    /// Sets no_new_privs and keeps only `capabilities` in the calling thread (capabilities
    /// are per thread: every thread that runs on calls this itself).
    public static func keepOnly(_ capabilities: [Int]) throws(UtapError) {
        let mask = capabilities.reduce(UInt64(0)) { $0 | 1 << UInt64($1) }
        let rc = utap_keep_only_capabilities(mask)
        if rc < 0 { throw .runtime("cannot drop capabilities: \(String(cString: strerror(-rc)))") }
    }

    public let effective: UInt64

    public init(effective: UInt64) { self.effective = effective }

    public static func current() -> Capabilities {
        let status = (try? readTextFile("/proc/self/status")) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst("CapEff:".count).trimmingCharacters(in: " \t")
            return Capabilities(effective: UInt64(hex, radix: 16) ?? 0)
        }
        return Capabilities(effective: 0)
    }

    public func has(_ capability: Int) -> Bool { effective & (1 << UInt64(capability)) != 0 }

    /// Loading tracing programs and opening uprobe perf events.
    public var canUseBPF: Bool { (has(Self.bpf) && has(Self.perfmon)) || has(Self.sysAdmin) }
}

/// Reads a whole (small, procfs-style) text file.
public func readTextFile(_ path: String) throws(UtapError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        throw .runtime("cannot read \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return s
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of event timestamps and deadlines.
public func monotonicNow() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
