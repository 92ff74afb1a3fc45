import CLibbpf
import Glibc
import UtapCore

/// libbpf prints its diagnostics through a callback. utap keeps the last lines instead of
/// letting them reach the user's terminal, and puts the most telling one into its error.
enum LibbpfLog {
    nonisolated(unsafe) static var lines: [String] = []

    static func install() {
        lines = []
        libbpf_set_print { level, format, args in
            guard let format, let args else { return 0 }
            var buffer = [CChar](repeating: 0, count: 1024)
            _ = vsnprintf(&buffer, buffer.count, format, args)
            let line = String(cString: buffer).trimmingTrailingNewlines()
            if level != LIBBPF_DEBUG, !line.isEmpty {
                LibbpfLog.lines.append(line)
                if LibbpfLog.lines.count > 20 { LibbpfLog.lines.removeFirst() }
            }
            return 0
        }
    }

    /// A runtime error for a failed libbpf call: WHAT plus errno's text, and libbpf's own
    /// last complaint when it said something.
    static func error(_ what: String, errno code: Int32, hint: String? = nil) -> UtapError {
        let reason = String(cString: strerror(code))
        var detail = hint
        if detail == nil, let last = lines.last {
            detail = "libbpf: \(last)"
        }
        if code == EPERM || code == EACCES {
            detail = "run utap as root (it needs CAP_BPF and CAP_PERFMON), or use --backend ptrace"
        }
        return .runtime("\(what): \(reason)", hint: detail)
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = self
        while s.last == "\n" { s.removeLast() }
        return s
    }
}
