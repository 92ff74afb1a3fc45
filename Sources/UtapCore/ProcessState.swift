import Glibc

/// Liveness and /proc status of a process utap traces but did not start (so cannot wait
/// for).
public enum ProcessState {
    /// True once the process has exited, including while it is a zombie nobody reaped yet.
    public static func hasExited(_ pid: Int32) -> Bool {
        if kill(pid, 0) != 0 && errno == ESRCH { return true }
        guard let stat = try? readTextFile("/proc/\(pid)/stat") else { return true }
        // The state follows the parenthesised comm, which may itself contain ')'.
        guard let close = stat.lastIndex(of: ")") else { return true }
        let state = stat[stat.index(after: close)...].dropFirst().first
        return state == "Z" || state == "X"
    }

    /// Whether `pid` is a kernel thread (PF_KTHREAD in /proc/PID/stat's flags): it runs
    /// no user code, so nothing could ever be probed in it.
    public static func isKernelThread(_ pid: Int32) -> Bool {
        guard let stat = try? readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
        // After the comm: state, ppid, pgrp, session, tty_nr, tpgid, flags.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 6, let flags = UInt64(fields[6]) else { return false }
        return flags & 0x0020_0000 != 0
    }

    /// A number field of /proc/PID[/task/TID]/status (`Tgid`, `TracerPid`), nil when the
    /// process (thread) is gone or has no such field.
    public static func statusNumber(_ field: String, pid: Int32, tid: Int32? = nil) -> Int32? {
        let path = tid.map { "/proc/\(pid)/task/\($0)/status" } ?? "/proc/\(pid)/status"
        guard let text = try? readTextFile(path) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int32(line.dropFirst(field.count + 1).trimmingPrefix(while: { $0 == " " || $0 == "\t" }))
        }
        return nil
    }
}
