import Foundation
import Glibc
import XCTest

/// --filter, decided in the kernel for trace, count and latency.
final class FilterTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private func run(_ arguments: [String], _ target: String, _ args: [String]) throws -> Harness.Result {
        let path = NSTemporaryDirectory() + "utap-filter-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap([arguments[0], "--format", "json", "-o", path] + arguments.dropFirst()
                                 + ["--", Harness.target(target)] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        return r
    }

    func testComparisonsOfArgumentsSignsAndWidths() throws {
        try Harness.eachBackend { backend in
            let either = try run(["trace", "--filter", "arg0 >= 990 || arg1 == 4", "add2 a=arg0"], "args_pie", ["1000"])
            XCTAssertEqual(either.events("add2").map { $0.int("a")! }, [2] + Array(990..<1000))
            XCTAssertEqual(either.summary?["events"] as? Int, 11)

            let negative = try run(["trace", "--filter", "arg0 < 0", "take_s64 a=arg0"], "args_pie", ["3"])
            XCTAssertEqual(negative.events("take_s64").map { $0.int("a")! }, [Int64.min])
            let unsigned = try run(["trace", "--filter", "arg0:u64 > 0x7fffffffffffffff && !(arg1 == 0)", "take_s64"], "args_pie", ["3"])
            XCTAssertEqual(unsigned.events("take_s64").count, 1)
            // take_ints gets (-5, 250, ...): compared as s8 the first is -5, as u8 it is 251.
            let narrow = try run(["trace", "--filter", "arg0:s8 == -5 && arg0:u8 == 251 && arg1:u8 == 250", "take_ints"], "args_pie", ["3"])
            XCTAssertEqual(narrow.events("take_ints").count, 1)
        }
    }

    func testCommAndReturnValues() throws {
        try Harness.eachBackend { backend in
            let mine = try run(["trace", "--filter", #"comm == "args_pie""#, "add2"], "args_pie", ["20"])
            XCTAssertEqual(mine.events("add2").count, 20)
            let other = try run(["trace", "--filter", #"comm != "args_pie""#, "add2"], "args_pie", ["20"])
            XCTAssertEqual(other.events("add2").count, 0)
            XCTAssertEqual(other.summary?["events"] as? Int, 0)
            let returns = try run(["trace", "--filter", "ret > 50", "add2%return r=ret"], "args_pie", ["20"])
            XCTAssertEqual(returns.events("add2%return").map { $0.int("r")! }, (17..<20).map { Int64(3 * $0) })
        }
    }

    func testCountAndLatencyHonourTheFilter() throws {
        try Harness.eachBackend { backend in
            let counted = try run(["count", "--filter", "arg0 > 5", "add2"], "args_pie", ["10"])
            XCTAssertEqual(counted.records.first { $0["type"] as? String == "count" }?["count"] as? Int, 4)
            let slow = try run(["latency", "--filter", "latency > 10ms", "nap"], "sleeper", ["3"])
            XCTAssertEqual(slow.records.first { $0["type"] as? String == "latency" }?["count"] as? Int, 3)
            let fast = try run(["latency", "--filter", "latency < 1ms", "nap"], "sleeper", ["3"])
            XCTAssertEqual(fast.records.first { $0["type"] as? String == "latency" }?["count"] as? Int, 0)
        }
    }

    func testReturnOperandsOnEntryProbesAreRefused() throws {
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["trace", "--filter", "ret == 0", "add2", "--", Harness.target("args_pie")])
            XCTAssertEqual(r.status, 2)
            XCTAssertTrue(r.stderr.hasPrefix("utap: error: --filter: ret and latency exist only on return probes"), r.stderr)
            XCTAssertEqual(r.stdout, "")
        }
    }

    /// And arguments on returns: their registers hold anything by then (it filtered on
    /// that garbage before, silently).
    func testArgumentOperandsOnReturnsAreRefused() throws {
        for command in [["trace", "--filter", "arg0 == 3", "add2%return"], ["latency", "--filter", "arg0 == 3", "add2"]] {
            let r = try Harness.utap(command + ["--", Harness.target("args_pie")])
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("utap: error: --filter: arguments are not known at a return"), r.stderr)
            XCTAssertTrue(r.stderr.contains("hint: filter return probes on ret, latency, pid, tid or comm"), r.stderr)
            XCTAssertEqual(r.stdout, "", "the command never ran")
        }
    }
}
