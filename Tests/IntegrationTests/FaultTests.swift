import Foundation
import Glibc
import XCTest

/// utap stopped or killed while busy: the traced program never notices.
final class FaultTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private static let loop = Harness.target("ptrace/loop")

    /// 100 attach/detach cycles per backend on a busy 4-thread process, ended in turn by
    /// SIGINT, SIGTERM, SIGHUP and --max-events: every cycle sees events and exits 0, no
    /// tracer and no utap link is left, and at the end the text is byte-identical to the
    /// file and the program still runs.
    func testSignalsToUtapUnderLoad() throws {
        let target = try Harness.WaitingTarget(executable: Self.loop, arguments: ["4000000000000", "--threads", "4", "--wait"])
        defer { target.kill() }
        target.release()
        let links = try UtapLinks.current()
        try Harness.eachBackend { backend in
            for cycle in 0..<100 {
                let probes = ["\(Self.loop):probe_me i=arg0", "\(Self.loop):probe_me%return"]
                var r: Harness.Result
                if cycle % 4 == 3 {
                    r = try Harness.utap(["trace", "--max-events", "50", "-p", String(target.pid)] + probes, timeout: 30)
                } else {
                    let utap = try Harness.Background(["trace", "-p", String(target.pid)] + probes)
                    usleep(20_000)
                    r = utap.stop([SIGINT, SIGTERM, SIGHUP][cycle % 4])
                }
                XCTAssertEqual(r.status, 0, "\(backend) cycle \(cycle): \(r.stderr)")
                XCTAssertTrue(r.stdout.contains("probe_me"), "\(backend) cycle \(cycle) saw events")
                guard let status = try? String(contentsOfFile: "/proc/\(target.pid)/status", encoding: .utf8) else {
                    return XCTFail("\(backend) cycle \(cycle): the target died; utap: \(r.stderr)")
                }
                XCTAssertTrue(status.contains("TracerPid:\t0\n"), "\(backend) cycle \(cycle)")
            }
        }
        XCTAssertEqual(try UtapLinks.left(since: links), [])
        XCTAssertEqual(try TextCheck.differences(pid: target.pid, path: Self.loop), [])
        let stat = try String(contentsOfFile: "/proc/\(target.pid)/stat", encoding: .utf8)
        XCTAssertFalse(stat.contains(") Z ") || stat.contains(") X "), "still running: \(stat)")
    }

    /// utap SIGKILLed while streaming with bpf, 20 times: the kernel drops its links with
    /// its file descriptors, and the program completes with its exact output.
    func testSIGKILLedUtapLeavesABPFTargetUnharmed() throws {
        let links = try UtapLinks.current()
        for run in 0..<20 {
            let target = try Harness.WaitingTarget(executable: Self.loop, arguments: ["3000000", "--threads", "2", "--wait"])
            let utap = try Harness.Background(["trace", "--backend", "bpf", "--format", "json", "-p", String(target.pid),
                                               "\(Self.loop):probe_me i=arg0", "\(Self.loop):probe_me%return"])
            target.release()
            usleep(30_000)
            let killed = utap.stop(SIGKILL)
            XCTAssertEqual(killed.status, SIGKILL, "run \(run): \(killed.stderr)")
            XCTAssertTrue(killed.stdout.contains("probe_me"), "run \(run): utap was tracing when killed")
            let end = target.finish()
            XCTAssertEqual(end.status, 0, "run \(run)")
            XCTAssertEqual(end.stdout, "threads=2 calls=6000000 sum=8999997000000\n", "run \(run)")
            XCTAssertEqual(try UtapLinks.left(since: links), [], "run \(run)")
        }
    }
}
