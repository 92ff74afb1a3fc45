import Foundation
import Glibc
import XCTest

/// Go programs: functions open with a stack check whose slow path grows (moves) the stack
/// and runs the function again from its first instruction; returns go through stacks Go
/// moves. Exact counts on both backends.
final class GoTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    /// An entry probe by name sits past the stack check: one entry per call even when the
    /// call grows its stack (a probe on the first instruction fired again after each
    /// growth), and every return is seen, by return sites (auto picks them for Go).
    func testEachCallIsEnteredOnceWhenItsStackGrows() throws {
        let program = Harness.target("gostack")
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["count", "main.work", "main.work%return", "main.grow", "main.grow%return",
                                      "--", program, "10000"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout.split(separator: "\n").first, "600000000", "the program's own output")
            let counts = Dictionary(uniqueKeysWithValues: r.stdout.split(separator: "\n").compactMap { line -> (String, Int)? in
                let columns = line.split(separator: " ", omittingEmptySubsequences: true)
                guard columns.count == 2, let count = Int(columns[1]) else { return nil }
                return (String(columns[0]), count)
            })
            XCTAssertEqual(counts["main.work"], 40000, "\(backend)")
            XCTAssertEqual(counts["main.work%return"], 40000, "\(backend)")
            XCTAssertEqual(counts["main.grow"], 2040, "\(backend)")
            XCTAssertEqual(counts["main.grow%return"], 2040, "\(backend)")
        }
    }

    /// arg0 and arg1 of a Go function are its first two integer arguments (rax, rbx in
    /// Go's register ABI, not rdi, rsi), and ret its result, on both backends.
    func testArgumentsAreReadFromGosRegisters() throws {
        let program = Harness.target("gostack")
        let path = NSTemporaryDirectory() + "utap-go-\(getpid()).out"
        defer { unlink(path) }
        try Harness.eachBackend { backend in
            var r = try Harness.utap(["trace", "--format", "json", "-o", path, "main.work a=arg0 b=arg1",
                                      "main.work%return r=ret", "--", program, "2000"])
            XCTAssertEqual(r.status, 0, r.stderr)
            r.output = try String(contentsOfFile: path, encoding: .utf8)
            let entries = r.events("main.work")
            XCTAssertEqual(entries.count, 8000, backend)
            // Each goroutine g calls work(i, g) for i = 0, 1, ... in order.
            for g in 0..<4 {
                XCTAssertEqual(entries.filter { $0.int("b") == Int64(g) }.map { $0.int("a")! }, (0..<2000).map { Int64($0) },
                               "\(backend): goroutine \(g)")
            }
            let results = r.events("main.work%return").map { $0.int("r")! }.sorted()
            XCTAssertEqual(results, (0..<2000).flatMap { i in (0..<4).map { Int64(3 * i + $0) } }.sorted(), backend)
        }
    }

    func testAFilterOnArgumentsOfAGoFunctionIsRefused() throws {
        let r = try Harness.utap(["trace", "--filter", "arg0 > 3", "main.work a=arg0", "--", Harness.target("gostack"), "10"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("utap: error: --filter: argN there means the C argument registers"), r.stderr)
    }
}
