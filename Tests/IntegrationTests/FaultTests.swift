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
            let output = NSTemporaryDirectory() + "utap-sigkill-\(getpid()).json"
            defer { unlink(output) }
            let utap = try Harness.Background(["trace", "--backend", "bpf", "--format", "json", "-o", output,
                                               "-p", String(target.pid),
                                               "\(Self.loop):probe_me i=arg0", "\(Self.loop):probe_me%return"])
            target.release()
            // Killed once events reach the file: streaming, however slow the build.
            let deadline = Date().addingTimeInterval(30)
            while ((try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0) == 0,
                  Date() < deadline {
                usleep(5_000)
            }
            let killed = utap.stop(SIGKILL)
            XCTAssertEqual(killed.status, SIGKILL, "run \(run): \(killed.stderr)")
            let written = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            XCTAssertTrue(written.contains("probe_me"), "run \(run): utap was tracing when killed")
            let end = target.finish()
            XCTAssertEqual(end.status, 0, "run \(run)")
            XCTAssertEqual(end.stdout, "threads=2 calls=6000000 sum=8999997000000\n", "run \(run)")
            XCTAssertEqual(try UtapLinks.left(since: links), [], "run \(run)")
        }
    }

    /// A flood: two threads call the probe as fast as they can while whatever reads utap's
    /// output stalls until they are done, with a 1 MiB ring. bpf loses events and says
    /// exactly how many; ptrace loses none (its queue is bounded: a slow reader holds the
    /// target back). Either way utap finishes, the program's output is exact, and utap's
    /// peak memory is that of a run of 2 calls, give or take the buffers.
    func testFloodLosesOnlyWhatItCountsAndMemoryStaysBounded() throws {
        try Harness.eachBackend { backend in
            let perThread = backend == "bpf" ? 400_000 : 10_000
            let flood = try floodRun(backend: backend, perThread: perThread, stalled: true)
            XCTAssertEqual(flood.events + flood.lost, 2 * perThread, backend)
            if backend == "bpf" {
                XCTAssertGreaterThan(flood.lost, 0, "a stalled reader and a 1 MiB ring must lose events")
            } else {
                XCTAssertEqual(flood.lost, 0, "ptrace holds the target back rather than lose events")
            }
            let quiet = try floodRun(backend: backend, perThread: 1, stalled: false)
            XCTAssertEqual(quiet.events, 2, backend)
            // AddressSanitizer keeps freed memory in quarantine (256 MiB): no measure there.
            guard Harness.sanitizer != "address" else { return }
            XCTAssertLessThan(flood.peakKiB, quiet.peakKiB + Self.floodHeadroomKiB,
                              "\(backend): peak RSS \(flood.peakKiB) KiB flooded, \(quiet.peakKiB) KiB quiet")
        }
    }

    /// What a flood may add to utap's peak memory: its ring buffer mapping (1 MiB), output
    /// buffer and event queue (ptrace: 65536 events at most), with room to spare, far
    /// below what keeping the hundreds of thousands of events of the flood would take.
    static let floodHeadroomKiB = 48 * 1024

    /// `utap trace --format json --buffer-mb 1 -o FIFO 'loop:probe_me i=arg0' -- loop
    /// PER_THREAD --threads 2`, the FIFO read only once the program is done when
    /// `stalled`. Checks the exit status, the program's output and the summary's agreement
    /// with the stream; returns the counts and utap's peak RSS (VmHWM, read until it exits).
    private func floodRun(backend: String, perThread: Int, stalled: Bool) throws
        -> (events: Int, lost: Int, peakKiB: Int) {
        let dir = NSTemporaryDirectory() + "utap-flood-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = """
            mkfifo '\(dir)/fifo'
            (exec 3<'\(dir)/fifo'; \(stalled ? "until grep -q threads= '\(dir)/stdout'; do sleep 0.1; done" : "")
             awk '/"type":"event"/ { n++ } /"type":"summary"/ { s = $0 } END { print n + 0; print s }' <&3 > '\(dir)/out') &
            '\(Harness.utap)' trace --backend \(backend) --format json --buffer-mb 1 -o '\(dir)/fifo' \\
                '\(Self.loop):probe_me i=arg0' -- '\(Self.loop)' \(perThread) --threads 2 > '\(dir)/stdout' &
            utap=$!
            peak=0
            while kill -0 $utap 2>/dev/null; do
                hwm=$(awk '/^VmHWM/ { print $2 }' /proc/$utap/status 2>/dev/null); [ -n "$hwm" ] && peak=$hwm
                sleep 0.05
            done
            wait $utap; status=$?; wait
            echo "$peak"; exit $status
            """
        let r = try Harness.run("/bin/bash", ["-c", script], timeout: 300)
        XCTAssertEqual(r.status, 0, "\(backend): \(r.stderr)")
        XCTAssertEqual(try String(contentsOfFile: dir + "/stdout", encoding: .utf8),
                       "threads=2 calls=\(2 * perThread) sum=\(perThread * (perThread - 1))\n", backend)
        let lines = try String(contentsOfFile: dir + "/out", encoding: .utf8).split(separator: "\n")
        let events = try XCTUnwrap(Int(lines.first ?? ""), backend)
        let summary = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as? [String: Any], backend)
        let lost = try XCTUnwrap(summary["lost"] as? Int, backend)
        XCTAssertEqual(summary["events"] as? Int, events, backend)
        XCTAssertTrue(r.stderr.contains("utap: \(events) events, \(lost) lost"), "\(backend): \(r.stderr)")
        let peak = try XCTUnwrap(Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), r.stdout)
        return (events, lost, peak)
    }
}
