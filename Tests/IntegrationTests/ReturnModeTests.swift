import Foundation
import Glibc
import XCTest

/// Return probes by return-address hijack (kernel uretprobe) and by probes on each `ret`.
final class ReturnModeTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private func trace(_ mode: String, _ probes: [String], _ target: String, _ args: [String]) throws -> Harness.Result {
        let path = NSTemporaryDirectory() + "utap-ret-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap(["trace", "--format", "json", "-o", path, "--return-mode", mode] + probes
                                 + ["--", Harness.target(target)] + args)
        r.output = try? String(contentsOfFile: path, encoding: .utf8)
        return r
    }

    /// middle(i) returns i + 1 for even i; for odd i an exception unwinds through it.
    func testExceptionsPassThroughReturnSites() throws {
        try Harness.eachBackend { backend in
            for mode in ["sites", "auto"] {
                let r = try trace(mode, ["_Z6middlei%return r=ret:s32"], "exceptions", ["20"])
                XCTAssertEqual(r.status, 0, "\(mode): \(r.stderr)")
                XCTAssertEqual(r.stdout, "caught=10 sum=100\n", "the program's own output is untouched")
                let returns = r.events("_Z6middlei%return")
                XCTAssertEqual(returns.map { $0.int("r")! }, stride(from: 1, to: 20, by: 2).map { Int64($0) })
                // Calls abandoned by an exception are dropped, not paired with a later return:
                // every latency is one call of a function that does almost nothing.
                for latency in returns.compactMap({ ($0["latency_ns"] as? NSNumber)?.uint64Value }) {
                    XCTAssertLessThan(latency, 10_000_000)
                }
                XCTAssertEqual(returns.filter { $0["latency_ns"] != nil }.count, 10, mode)
            }
        }
    }

    /// The kernel's uretprobe replaces the return address; the C++ unwinder finds no
    /// unwind information for the trampoline and calls std::terminate. utap documents it
    /// and picks sites for C++ programs by default.
    func testHijackedReturnKillsAnUnwindingCppProgram() throws {
        try Harness.eachBackend { backend in
            let r = try trace("hijack", ["_Z6middlei%return r=ret:s32"], "exceptions", ["20"])
            XCTAssertEqual(r.status, 128 + SIGABRT, r.stderr)
            XCTAssertTrue(r.stderr.contains("terminate called after throwing"), r.stderr)
        }
    }

    /// ucontext coroutines that switch inside return-probed calls: the kernel's
    /// uretprobes (bpf, hijack) break the program (they pair returns by stack order), so
    /// auto picks sites for a program that imports swapcontext, on both backends, and
    /// every call's return is seen. A function that only tail-calls swapcontext has no
    /// `ret`, and is refused in auto with the hint to choose hijack (which the ptrace
    /// backend keeps: PtraceCorpusTests).
    func testCoroutineProgramsGetReturnSitesByDefault() throws {
        let program = Harness.target("ptrace/coroutines")
        let plain = try Harness.run(program, ["10", "finish"])
        XCTAssertEqual(plain.status, 0)
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["count", "--format", "json", "\(program):descend%return", "--", program, "10", "finish"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.hasPrefix(plain.stdout), "\(backend): \(r.stdout)")
            let counts = r.records.filter { $0["type"] as? String == "count" }
            XCTAssertEqual(counts.map { $0["count"] as? Int }, [120], backend)
            let tail = try Harness.utap(["count", "\(program):switch_to%return", "--", program, "10", "finish"])
            XCTAssertEqual(tail.status, 2, tail.stderr)
            XCTAssertTrue(tail.stderr.contains("switch_to has no ret instruction") && tail.stderr.contains("use --return-mode hijack"),
                          tail.stderr)
        }
    }

    /// The same for Rust: a panic unwinding through a hijacked frame makes the Rust
    /// runtime abort ("failed to initiate panic"), so auto picks sites for Rust programs
    /// (they link libgcc_s, Rust's unwinder) and the panics are caught as untraced.
    func testRustPanicsPassThroughReturnSitesByDefault() throws {
        try Harness.requireTargets(["panics"], builtWith: "rustc")
        try Harness.eachBackend { backend in
            let r = try trace("auto", ["panics::middle%return r=ret:s64"], "panics", ["10"])
            XCTAssertEqual(r.status, 0, "\(backend): \(r.stderr)")
            XCTAssertEqual(r.stdout, "panicked=5 sum=25\n", backend)
            XCTAssertEqual(r.events("panics::middle%return").map { $0.int("r")! }, [1, 3, 5, 7, 9], backend)
            let hijack = try trace("hijack", ["panics::middle%return r=ret:s64"], "panics", ["10"])
            XCTAssertEqual(hijack.status, 128 + SIGABRT, "\(backend): \(hijack.stderr)")
            XCTAssertTrue(hijack.stderr.contains("failed to initiate panic"), hijack.stderr)
        }
    }

    /// Each call that an exception or a panic abandons leaves its entry behind; the next
    /// call from the same frame must drop it, or after 64 such calls every entry is lost
    /// (and latencies are measured from stale entries). 200 calls, 100 abandoned.
    func testAbandonedCallsDoNotFillTheEntryStack() throws {
        try Harness.requireTargets(["panics"], builtWith: "rustc")
        try Harness.eachBackend { backend in
            for (target, function) in [("exceptions", "_Z6middlei"), ("panics", "panics::middle")] {
                let r = try Harness.utap(["latency", "--format", "json", function, "--", Harness.target(target), "200"])
                XCTAssertEqual(r.status, 0, "\(backend) \(target): \(r.stderr)")
                XCTAssertFalse(r.stderr.contains("could not be"), "\(backend) \(target): \(r.stderr)")
                XCTAssertTrue(r.stdout.contains(#""count":100"#), "\(backend) \(target): \(r.stdout)")
                XCTAssertTrue(r.stdout.contains("sum=10000"), "\(backend) \(target): \(r.stdout)")
            }
        }
    }

    /// For ordinary C both modes see the same returns with the same values.
    func testSitesAndHijackAgreeOnC() throws {
        try Harness.eachBackend { backend in
            let sites = try trace("sites", ["fib%return ret"], "fib", ["10"])
            let hijack = try trace("hijack", ["fib%return ret"], "fib", ["10"])
            XCTAssertEqual(sites.status, 0, sites.stderr)
            XCTAssertEqual(hijack.status, 0, hijack.stderr)
            XCTAssertEqual(sites.events("fib%return").count, 177)
            XCTAssertEqual(sites.events("fib%return").map { $0.int("ret")! }, hijack.events("fib%return").map { $0.int("ret")! })
            XCTAssertEqual(sites.events("fib%return").filter { $0["latency_ns"] != nil }.count, 177)
            let latency = try Harness.utap(["latency", "--return-mode", "sites", "--format", "json", "fib", "--",
                                            Harness.target("fib"), "10"])
            XCTAssertTrue(latency.stdout.contains(#""count":177"#), latency.stdout)
        }
    }
}
