import Foundation
import Glibc
import XCTest

/// `utap count` and `utap latency`: aggregation in the kernel, exact totals.
final class AggregateTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private func run(_ subcommand: String, _ options: [String], _ probes: [String], _ target: String,
                     _ args: [String] = []) throws -> Harness.Result {
        let path = NSTemporaryDirectory() + "utap-\(subcommand)-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap([subcommand, "-o", path] + options + probes + ["--", Harness.target(target)] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        return r
    }

    func testCountsEqualTheTargetsOwnCalls() throws {
        try Harness.eachBackend { backend in
            let r = try run("count", ["--format", "json"], ["add2", "take_str", "is_even%return", "first_call"], "args_pie", ["1234"])
            var counts: [String: Int] = [:]
            for record in r.records where record["type"] as? String == "count" {
                counts[record["probe"] as! String] = record["count"] as? Int
            }
            XCTAssertEqual(counts, ["add2": 1234, "take_str": 5, "is_even%return": 2, "first_call": 1])
            XCTAssertTrue(r.stdout.contains("sum=2282283 strs=309"), "the target's output is untouched")
        }
    }

    func testCountTableIsSortedByHits() throws {
        try Harness.eachBackend { backend in
            let r = try run("count", [], ["take_str", "add2", "first_call"], "args_nopie", ["50"])
            XCTAssertEqual(r.trace.split(separator: "\n").map { $0.split(separator: " ").map(String.init) },
                           [["PROBE", "COUNT"], ["add2", "50"], ["take_str", "5"], ["first_call", "1"]])
        }
    }

    func testCountByPidSeparatesProcesses() throws {
        // System-wide: every process that runs the file is counted, one row each.
        let utap = try Harness.Background(["count", "--by-pid", "--format", "json", Harness.target("args_pie") + ":add2"])
        let pie = Harness.target("args_pie")
        let both = try Harness.run("/bin/sh", ["-c", "'\(pie)' 30 >/dev/null & echo $!; '\(pie)' 70 >/dev/null & echo $!; wait"])
        let pids = both.stdout.split(separator: "\n").compactMap { Int($0) }
        XCTAssertEqual(pids.count, 2)
        let r = utap.stop(SIGINT)
        var perPid: [Int: Int] = [:]
        for row in r.records where row["type"] as? String == "count" {
            perPid[row["pid"] as! Int] = row["count"] as? Int
            XCTAssertEqual(row["comm"] as? String, "args_pie", "named at its first hit, though gone by the report")
        }
        XCTAssertEqual(perPid, [pids[0]: 30, pids[1]: 70])

        let target = try Harness.WaitingTarget("threads", ["500"])
        let threads = try Harness.Background(["count", "--by-pid", "--format", "json", "-p", String(target.pid), "work"])
        _ = target.go()
        let counted = threads.wait()
        let rows = counted.records.filter { $0["type"] as? String == "count" }
        XCTAssertEqual(rows.count, 1, "four threads, one process")
        XCTAssertEqual(rows.first?["pid"] as? Int, Int(target.pid))
        XCTAssertEqual(rows.first?["count"] as? Int, 2000)
    }

    /// Each probe's row names the process as it was called at that probe's first hit in
    /// it: a process that renames itself between two probes shows both names.
    func testCountByPidNamesTheProcessAtEachProbesFirstHit() throws {
        try Harness.eachBackend { backend in
            let path = NSTemporaryDirectory() + "utap-rename-\(getpid()).out"
            defer { unlink(path) }
            let r = try Harness.utap(["count", "--by-pid", "--format", "json", "-o", path, "before_rename", "after_rename",
                                      "--", Harness.target("rename_me"), "20"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, "renamed 20\n")
            let rows = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").compactMap {
                try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }.filter { $0["type"] as? String == "count" }
            let names = Dictionary(uniqueKeysWithValues: rows.map { ($0["probe"] as! String, $0["comm"] as! String) })
            XCTAssertEqual(names, ["before_rename": "rename_me", "after_rename": "after-rename"], backend)
            XCTAssertEqual(rows.map { $0["count"] as? Int }, [20, 20], backend)
        }
    }

    func testIntervalReportsAddUpToTheTotal() throws {
        try Harness.eachBackend { backend in
            let target = try Harness.WaitingTarget("forever", [])
            defer { target.kill() }
            let utap = try Harness.Background(["count", "--format", "json", "--interval", "0.2", "-p", String(target.pid), "tick"])
            target.release()
            usleep(1_100_000)
            target.kill()
            let r = utap.wait()
            let reports = r.records.filter { $0["type"] as? String == "count" }
            XCTAssertGreaterThanOrEqual(reports.count, 5, "a report every 0.2 s")
            let total = reports.reduce(0) { $0 + ($1["count"] as! Int) }
            // forever ticks once per ms; the sum of the intervals is every tick seen.
            XCTAssertGreaterThan(total, 500)
            XCTAssertLessThan(total, 1200)
        }
    }

    func testLatencyHistogramHoldsTheKnownSleeps() throws {
        try Harness.eachBackend { backend in
            let r = try run("latency", ["--format", "json"], ["nap"], "sleeper", ["5"])
            let report = try XCTUnwrap(r.records.first { $0["type"] as? String == "latency" })
            XCTAssertEqual(report["probe"] as? String, "nap")
            XCTAssertEqual(report["count"] as? Int, 5)
            let buckets = try XCTUnwrap(report["buckets"] as? [[String: Any]])
            // nap(20) sleeps 20 ms and a little more: all in [2^24, 2^25) ns = [16.8, 33.6) ms.
            XCTAssertEqual(buckets.map { $0["ge_ns"] as? Int }, [1 << 24])
            XCTAssertEqual(buckets.map { $0["count"] as? Int }, [5])
            let max = try XCTUnwrap(report["max_ns"] as? Int)
            XCTAssertGreaterThanOrEqual(max, 20_000_000)
            XCTAssertLessThanOrEqual(report["p99_ns"] as! Int, max)
            XCTAssertGreaterThanOrEqual(report["p50_ns"] as! Int, 20_000_000)
            XCTAssertGreaterThanOrEqual(report["sum_ns"] as! Int, 5 * 20_000_000)
        }
    }

    func testLatencyUnderRecursionCountsEveryCall() throws {
        try Harness.eachBackend { backend in
            let r = try run("latency", [], ["fib"], "fib", ["12"])
            let lines = r.trace.split(separator: "\n")
            XCTAssertTrue(lines.first?.hasPrefix("fib: count=465  avg=") == true, r.trace)
            XCTAssertTrue(lines.contains { $0.contains("latency (ns)") && $0.contains("distribution") })
            let rowTotal = lines.dropFirst(2).compactMap { line -> Int? in
                let parts = line.split(separator: " ")
                return parts.count >= 5 ? Int(parts[3]) : nil
            }.reduce(0, +)
            XCTAssertEqual(rowTotal, 465, r.trace)
        }
    }

    func testFieldsAreRefused() throws {
        let r = try Harness.utap(["count", "add2 a=arg0", "--", Harness.target("args_pie")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.hasPrefix("utap: error: probe 'add2': fields are not recorded here"), r.stderr)
        XCTAssertEqual(r.stdout, "", "the command never ran")
    }
}
