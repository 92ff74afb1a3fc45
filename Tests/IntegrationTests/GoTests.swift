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
}
