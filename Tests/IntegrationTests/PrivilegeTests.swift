import Foundation
import Glibc
import XCTest

/// Least privilege: once its probes are attached, every thread of utap keeps only what
/// tracing on needs, with no_new_privs set.
final class PrivilegeTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    /// CAP_DAC_READ_SEARCH, CAP_KILL, CAP_SYS_PTRACE and CAP_CHECKPOINT_RESTORE (bits 2, 5,
    /// 19 and 40), in every thread, under both backends.
    func testEveryThreadDropsWhatItNoLongerNeeds() throws {
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        target.release()
        try Harness.eachBackend { backend in
            let utap = try Harness.Background(["trace", "-p", String(target.pid), "tick i=arg0"])
            let pid = utap.process.processIdentifier
            usleep(200_000)  // the output watchdog starts with the run loop, after the status line
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
            // ThreadSanitizer's runtime starts a thread of its own once the program has
            // started one (ptrace: the tracer thread); it is not utap's. utap's: the main
            // thread, the output watchdog, and with ptrace the tracer.
            let utapThreads = backend == "ptrace" ? 3 : 2
            let runtimeThreads = Harness.sanitizer == "thread" && backend == "ptrace" ? 1 : 0
            XCTAssertEqual(tasks.count, utapThreads + runtimeThreads, "\(backend): threads \(tasks)")
            var privileged: [String] = []
            for task in tasks {
                let status = try String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8)
                func field(_ name: String) -> String? {
                    status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                        .map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) }
                }
                if field("CapEff") != "0000010000080024" || field("CapPrm") != "0000010000080024"
                    || field("CapInh") != "0000000000000000" || field("NoNewPrivs") != "1" {
                    privileged.append("\(task): \(status)")
                }
            }
            XCTAssertEqual(privileged.count, runtimeThreads, "\(backend): threads keeping more: \(privileged)")
            usleep(200_000)  // forever ticks every ms: events under the reduced privileges
            let r = utap.stop(SIGINT)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("tick"), "\(backend): still traced with fewer privileges")
        }
    }
}
