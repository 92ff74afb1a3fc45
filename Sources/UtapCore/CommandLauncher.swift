import CUtapSys
import Glibc

/// A COMMAND started by utap, held before its first instruction until the probes are in
/// place: the child is forked and blocks on a pipe; `release` lets it exec.
public final class LaunchedCommand {
    public let pid: Int32
    public let executable: String
    private var gateWrite: Int32
    private var exitStatus: Int32?

    /// Finds `arguments[0]` like a shell does (PATH unless it contains '/') and forks the
    /// gated child. Nothing of the command runs until `release`.
    public init(_ arguments: [String]) throws(UtapError) {
        guard let name = arguments.first else {
            throw .usage("no command after '--'")
        }
        executable = try Self.find(name)
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            throw .runtime("cannot start '\(name)': pipe: \(String(cString: strerror(errno)))")
        }
        // Close-on-exec, so no other child utap starts inherits the gate.
        fds.forEach { _ = fcntl($0, F_SETFD, FD_CLOEXEC) }
        let argv = arguments.map { strdup($0) } + [nil]
        let env = environ
        let child = utap_spawn_gated(executable, argv, env, fds[0], fds[1])
        argv.forEach { free($0) }
        close(fds[0])
        if child < 0 {
            close(fds[1])
            throw .runtime("cannot start '\(name)': \(String(cString: strerror(-child)))")
        }
        pid = child
        gateWrite = fds[1]
    }

    deinit {
        // Never released: the child exits without running the command.
        if gateWrite >= 0 { close(gateWrite) }
    }

    /// Lets the command exec.
    public func release() {
        guard gateWrite >= 0 else { return }
        var go: UInt8 = 1
        _ = write(gateWrite, &go, 1)
        close(gateWrite)
        gateWrite = -1
    }

    /// Closes the gate without running the command and reaps the child.
    public func abandon() {
        guard gateWrite >= 0 else { return }
        close(gateWrite)
        gateWrite = -1
        _ = waitForExit()
    }

    /// The command's exit status as a shell reports it (128+N for signal N), once it has
    /// exited; nil while it runs.
    public func pollExit() -> Int32? {
        if exitStatus == nil { reap(options: WNOHANG) }
        return exitStatus
    }

    /// Blocks until the command exits; returns its shell-style status.
    public func waitForExit() -> Int32 {
        while exitStatus == nil { reap(options: 0) }
        return exitStatus!
    }

    /// The command was reaped by someone else (the ptrace tracer thread), with this wait
    /// status.
    public func recordExit(waitStatus status: Int32) {
        guard exitStatus == nil else { return }
        let termSig = status & 0x7f
        exitStatus = termSig == 0 ? (status >> 8) & 0xff : 128 + termSig
    }

    public func signal(_ signo: Int32) {
        if exitStatus == nil { kill(pid, signo) }
    }

    private func reap(options: Int32) {
        var status: Int32 = 0
        let r = waitpid(pid, &status, options)
        if r == pid {
            recordExit(waitStatus: status)
        } else if r < 0 && errno != EINTR {
            exitStatus = 127
        }
    }

    static func find(_ name: String) throws(UtapError) -> String {
        if name.contains("/") {
            try checkExecutable(name, shown: name)
            return name
        }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (dir.isEmpty ? "." : String(dir)) + "/" + name
            if access(candidate, X_OK) == 0, !isDirectory(candidate) {
                try checkExecutable(candidate, shown: name)
                return candidate
            }
        }
        throw .usage("command '\(name)': not found in PATH")
    }

    static func checkExecutable(_ path: String, shown: String) throws(UtapError) {
        if access(path, F_OK) != 0 {
            throw .usage("command '\(shown)': no such file")
        }
        if isDirectory(path) || access(path, X_OK) != 0 {
            throw .usage("command '\(shown)': not an executable file")
        }
        // Its probes would go on the 64-bit libraries it never maps: nothing would fire.
        if let problem = ELFImage.foreignELFProblem(path) {
            throw .usage("command '\(shown)': \(problem)", hint: "utap traces 64-bit x86-64 programs")
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}
