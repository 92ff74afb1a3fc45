import Foundation
import Glibc
import XCTest

/// --follow-forks: the processes a traced process forks are traced, no others.
final class FollowForksTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    func testChildrenAreTracedAndOthersAreNot() throws {
        let pie = Harness.target("args_pie")
        let children = "'\(pie)' 3 >/dev/null; '\(pie)' 4 >/dev/null"
        let followed = try Harness.utap(["trace", "--format", "json", "--follow-forks", pie + ":add2 a=arg0",
                                         "--", "/bin/sh", "-c", children])
        XCTAssertEqual(followed.status, 0, followed.stderr)
        let events = followed.events(pie + ":add2")
        XCTAssertEqual(events.map { $0.int("a")! }, [0, 1, 2, 0, 1, 2, 3])
        XCTAssertEqual(Set(events.map { $0["pid"] as! Int }).count, 2, "two children")

        let unfollowed = try Harness.utap(["trace", "--format", "json", pie + ":add2", "--", "/bin/sh", "-c", children])
        XCTAssertEqual(unfollowed.events.count, 0, "without --follow-forks only the shell itself is traced")

        // A process that is not a descendant runs the same code all along: not traced.
        let unrelated = try Harness.WaitingTarget("forever", [])
        defer { unrelated.kill() }
        unrelated.release()
        let forever = Harness.target("forever")
        let mixed = try Harness.utap(["trace", "--format", "json", "--follow-forks", forever + ":tick",
                                      "--", "/bin/sh", "-c", "timeout -s KILL 0.3 '\(forever)' >/dev/null; true"])
        XCTAssertEqual(mixed.status, 0, mixed.stderr)
        let pids = Set(mixed.events(forever + ":tick").map { $0["pid"] as! Int })
        XCTAssertEqual(pids.count, 1, "only the command's child")
        XCTAssertFalse(pids.contains(Int(unrelated.pid)))
        XCTAssertGreaterThan(mixed.events(forever + ":tick").count, 50, "the child ticks every ms for 0.3 s")
    }

    /// A forked child returns from fork() too, on its copy of the stack: with --follow-forks
    /// both returns are seen, each with the latency of the parent's call, on both backends
    /// (bpf gave the child's none).
    func testForkReturnsInBothProcessesWithItsLatency() throws {
        let program = try Harness.compile("""
            #include <unistd.h>
            #include <sys/wait.h>
            int main(void) {
                pid_t child = fork();
                if (child == 0) _exit(0);
                waitpid(child, 0, 0);
                return 0;
            }
            """, named: "forks", for: self)
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["trace", "--format", "json", "--follow-forks", "libc:fork%return r=ret:s32",
                                      "--", program])
            XCTAssertEqual(r.status, 0, r.stderr)
            let returns = r.events("libc:fork%return")
            // The child's return is 0, in the child; the parent's is the child's pid.
            let child = returns.first { $0.int("r") == 0 }.map { Int64($0["pid"] as! Int) } ?? -1
            XCTAssertEqual(Set(returns.map { $0.int("r")! }), [0, child], backend)
            XCTAssertEqual(returns.filter { $0["latency_ns"] != nil }.count, 2, "\(backend): \(returns)")
        }
    }

    /// An empty trace of a command that started processes says why, once: the usual case
    /// is a script that runs the program to trace. Not when something was seen, nor when
    /// the children were followed.
    func testAnEmptyTraceOfACommandWithChildrenSaysSo() throws {
        let pie = Harness.target("args_pie")
        // A child of a few ms: polling /proc for children missed it; the backends see the fork.
        let script = "'\(pie)' 3 >/dev/null; true"
        let hint = "utap: hint: the command started child processes, which are not traced without --follow-forks\n"
        try Harness.eachBackend { backend in
            for command in ["trace", "count"] {
                let empty = try Harness.utap([command, pie + ":add2", "--", "/bin/sh", "-c", script])
                XCTAssertEqual(empty.status, 0, empty.stderr)
                XCTAssertTrue(empty.stderr.hasSuffix(hint), "\(backend) \(command): \(empty.stderr)")
                let followed = try Harness.utap([command, "--follow-forks", pie + ":add2", "--", "/bin/sh", "-c", script])
                XCTAssertFalse(followed.stderr.contains("hint:"), "\(backend) \(command): \(followed.stderr)")
            }
            let alone = try Harness.utap(["trace", pie + ":add2", "--", pie, "3"])
            XCTAssertFalse(alone.stderr.contains("hint:"), alone.stderr)
        }
    }

    func testNeedsAProcess() throws {
        let r = try Harness.utap(["trace", "--follow-forks", "libc:malloc"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.hasPrefix("utap: error: --follow-forks: needs -p PID or -- COMMAND"), r.stderr)
    }
}
