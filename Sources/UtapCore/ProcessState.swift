import Glibc

/// Liveness of a process utap traces but did not start (so cannot wait for).
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
}
