import Foundation
import Glibc
import XCTest

/// `utap trace` with the bpf backend on real targets: exact counts and exact values.
final class TraceTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    /// Traces a target it starts. Events go to a file: the target writes to the same
    /// stdout, and its writes could land inside one of utap's large writes.
    private func trace(_ probes: [String], _ target: String, _ args: [String] = [],
                       options: [String] = ["--format", "json"],
                       environment: [String: String] = [:]) throws -> Harness.Result {
        let path = NSTemporaryDirectory() + "utap-trace-\(getpid()).out"
        defer { unlink(path) }
        var result = try Harness.utap(["trace", "-o", path] + options + probes + ["--", Harness.target(target)] + args,
                                      environment: environment)
        XCTAssertEqual(result.status, 0, "utap failed: \(result.stderr)")
        result.output = try String(contentsOfFile: path, encoding: .utf8)
        return result
    }

    /// Every build of the args target: PIE, non-PIE, stripped (with and without a debug
    /// file), -O0 and clang.
    func testExactCountsArgumentsAndReturnsInEveryBuild() throws {
        try Harness.eachBackend { backend in
            for target in ["args_pie", "args_nopie", "args_stripped", "args_debuglink", "args_minidebuginfo", "args_O0", "args_clang"] {
                let r = try trace(["add2 a=arg0 b=arg1", "add2%return r=ret"], target, ["1000"])
                let entries = r.events("add2"), returns = r.events("add2%return")
                XCTAssertEqual(entries.count, 1000, target)
                XCTAssertEqual(returns.count, 1000, target)
                XCTAssertEqual(entries.map { $0.int("a")! }, Array(0..<1000), target)
                XCTAssertEqual(entries.map { $0.int("b")! }, (0..<1000).map { 2 * $0 }, target)
                XCTAssertEqual(returns.map { $0.int("r")! }, (0..<1000).map { 3 * $0 }, target)
                XCTAssertTrue(returns.allSatisfy { ($0["latency_ns"] as? NSNumber)?.uint64Value ?? 0 > 0 }, target)
                XCTAssertTrue(r.stdout.contains("sum=1498500 strs=309"), "\(target)'s own output changed")
                let summary = try XCTUnwrap(r.summary, target)
                XCTAssertEqual(summary["events"] as? Int, 2000, target)
                XCTAssertEqual(summary["lost"] as? Int, 0, target)
            }
        }
    }

    /// utap attaches through uprobe multi-links on this kernel; the perf_event path
    /// (older kernels, UTAP_ATTACH=perf) must see exactly the same events.
    func testBothAttachPathsSeeTheSameEvents() throws {
        let probes = ["add2 a=arg0 b=arg1", "add2%return r=ret", "take_str s=arg0:str", "first_call x=arg0:s32"]
        func comparable(_ r: Harness.Result) -> [String] {
            r.events.map { event in
                let fields = (event["fields"] as! [String: Any]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                return "\(event["probe"]!) \(event["kind"]!) \(fields) \(event["latency_ns"] != nil)"
            }
        }
        let multi = try trace(probes, "args_pie", ["300"], environment: ["UTAP_ATTACH": "multi"])
        let perf = try trace(probes, "args_pie", ["300"], environment: ["UTAP_ATTACH": "perf"])
        XCTAssertEqual(multi.events.count, 300 + 300 + 5 + 1)
        XCTAssertEqual(comparable(multi), comparable(perf))
        let fromPid = try trace(["fib n=arg0:s32", "fib%return ret"], "fib", ["8"], environment: ["UTAP_ATTACH": "perf"])
        XCTAssertEqual(fromPid.events("fib").count, 67)
        XCTAssertEqual(fromPid.events("fib%return").last?.int("ret"), 21)
    }

    func testCommandSeesItsVeryFirstCall() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["first_call x=arg0:s32", "first_call%return ret:s32"], "args_pie")
            XCTAssertEqual(r.events("first_call").map { $0.int("x") }, [7])
            XCTAssertEqual(r.events("first_call%return").map { $0.int("ret") }, [42])
        }
    }

    /// Between the probes going in and the command's first instruction, utap's launcher
    /// runs no libc function: a probe on execve, read or close reports only the command.
    func testCommandSeesNothingOfTheLauncher() throws {
        try Harness.eachBackend { backend in
            let path = NSTemporaryDirectory() + "utap-launcher-\(getpid()).out"
            defer { unlink(path) }
            var r = try Harness.utap(["trace", "--format", "json", "-o", path, "libc:execve", "libc:read", "libc:close",
                                      "--", "/bin/true"])
            XCTAssertEqual(r.status, 0, r.stderr)
            r.output = try String(contentsOfFile: path, encoding: .utf8)
            let events = r.events
            XCTAssertEqual(events.filter { $0["probe"] as? String == "libc:execve" }.count, 0, "\(backend): \(events)")
            XCTAssertEqual(Set(events.map { $0["comm"] as? String ?? "?" }).subtracting(["true"]), [], backend)
        }
    }

    func testIntegersOfEveryWidthAndSign() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["take_ints a=arg0:s8 b=arg1:u8 c=arg2:s16 d=arg3:u16 e=arg4:s32 f=arg5:u32",
                               "take_s64 a=arg0:s64 b=arg1:u64 h=arg1:x p=arg0:ptr",
                               "take_s64%return ret", "is_even%return ret:bool"], "args_nopie")
            let ints = try XCTUnwrap(r.events("take_ints").first)
            XCTAssertEqual(ints.int("a"), -5)
            XCTAssertEqual(ints.int("b"), 250)
            XCTAssertEqual(ints.int("c"), -30000)
            XCTAssertEqual(ints.int("d"), 65000)
            XCTAssertEqual(ints.int("e"), -2_000_000_000)
            XCTAssertEqual(ints.int("f"), 4_000_000_000)
            let s64 = try XCTUnwrap(r.events("take_s64").first)
            XCTAssertEqual(s64.int("a"), Int64.min)
            XCTAssertEqual(s64.uint("b"), UInt64.max)
            XCTAssertEqual(s64.field("h") as? String, "0xffffffffffffffff")
            XCTAssertEqual(s64.field("p") as? String, "0x8000000000000000")
            XCTAssertEqual(r.events("take_s64%return").map { $0.int("ret") }, [-1])
            XCTAssertEqual(r.events("is_even%return").map { $0.field("ret") as? Bool }, [false, true])
        }
    }

    func testStringsEmptyLongNonUTF8AndNull() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["take_str s=arg0:str", "take_str%return n=ret:s32"], "args_pie")
            let strings = r.events("take_str").map { $0.field("s") }
            XCTAssertEqual(strings.count, 5)
            let alphabet = String(repeating: "abcdefghijklmnopqrstuvwxyz", count: 12)
            XCTAssertEqual(strings[0] as? String, "hello")
            XCTAssertEqual(strings[1] as? String, "")
            XCTAssertEqual(strings[2] as? String, String(alphabet.prefix(64)), "str keeps 64 bytes")
            XCTAssertTrue(strings[4] is NSNull, "a NULL pointer is null")
            XCTAssertEqual(r.events("take_str%return").map { $0.int("n") }, [5, 0, 300, 5, -1])
            // Bytes that are not UTF-8 are escaped byte by byte, never dropped.
            let line = try XCTUnwrap(r.trace.split(separator: "\n").filter { $0.contains("\"take_str\"") }.dropFirst(3).first)
            XCTAssertTrue(line.contains(#""s":"\u00ff\u00fe ok""#), String(line))

            let long = try trace(["take_str s=arg0:str[255]"], "args_pie")
            XCTAssertEqual(long.events("take_str")[2].field("s") as? String, String(alphabet.prefix(255)))
            let exact = try trace(["take_str s=arg0:str[5]"], "args_pie")
            XCTAssertEqual(exact.events("take_str")[0].field("s") as? String, "hello")
        }
    }

    func testTruncationIsMarkedInText() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["take_str s=arg0:str[5]"], "args_pie", options: [])
            let lines = r.trace.split(separator: "\n").filter { $0.contains("take_str") }
            XCTAssertTrue(lines[0].hasSuffix(#"s="hello""#), String(lines[0]))
            XCTAssertTrue(lines[2].hasSuffix(#"s="abcde"..."#), String(lines[2]))
            XCTAssertTrue(lines[3].hasSuffix(#"s="\xff\xfe ok""#), String(lines[3]))
            XCTAssertTrue(r.stderr.contains("utap: 5 events, 0 lost"), r.stderr)
        }
    }

    /// String literals on a page the program never touched cannot be read by BPF, and a
    /// command this short is gone before utap reads its records: bpf then reads them from
    /// the file they are mapped from (they printed null before).
    func testStringsOfAShortCommandOnUntouchedPages() throws {
        let program = try Harness.compile("""
            __attribute__((noipa)) int take(const char *s, int n) { return n; }
            int main(void) { take("plain", 1); take("two words", 2); take("", 3); return 0; }
            """, named: "short", for: self)
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["trace", "--format", "json", "take s=arg0:str n=arg1:s32", "take t=arg0:str[4]",
                                      "--", program])
            XCTAssertEqual(r.status, 0, r.stderr)
            // Both probes are named `take`: told apart by their fields.
            let full = r.events("take").filter { $0.field("n") != nil }, cut = r.events("take").filter { $0.field("n") == nil }
            XCTAssertEqual(full.map { $0.field("s") as? String }, ["plain", "two words", ""], backend)
            XCTAssertEqual(full.map { $0.int("n") }, [1, 2, 3], backend)
            XCTAssertEqual(cut.map { $0.field("t") as? String }, ["plai", "two ", ""], backend)
        }
    }

    /// A thread's integer events wait in its CPU's stage on bpf, while an event with a
    /// string goes to the ring directly; the stage goes first, so the stream keeps the
    /// order of the calls.
    func testIntegerAndStringEventsOfAThreadKeepTheirOrder() throws {
        let program = try Harness.compile("""
            #include <stdio.h>
            __attribute__((noipa)) long num(long i) { return i; }
            __attribute__((noipa)) long name(const char *s, long i) { return i; }
            int main(void) {
                char text[16];
                for (long i = 0; i < 300; i++) {
                    num(i);
                    if (i % 7 == 0) { snprintf(text, sizeof text, "s%ld", i); name(text, i); }
                }
                return 0;
            }
            """, named: "mixed", for: self)
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["trace", "--format", "json", "num i=arg0", "name s=arg0:str i=arg1", "--", program])
            XCTAssertEqual(r.status, 0, r.stderr)
            let seen = r.events.map { "\($0["probe"]!) \($0.int("i")!)" }
            let expected = (0..<300).flatMap { i in ["num \(i)"] + (i % 7 == 0 ? ["name \(i)"] : []) }
            XCTAssertTrue(seen == expected, "\(backend): \(seen.prefix(20))")
            XCTAssertEqual(r.events("name").map { $0.field("s") as? String }, stride(from: 0, to: 300, by: 7).map { "s\($0)" })
        }
    }

    func testSharedLibraryByShortName() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["libutaptest:lib_add a=arg0:s32 b=arg1:s32", "libutaptest:lib_greet s=arg0:str",
                               "libutaptest:lib_greet%return n=ret:s32"], "uselib", ["50"])
            XCTAssertEqual(r.events("libutaptest:lib_add").map { $0.int("a")! }, Array(0..<50))
            XCTAssertTrue(r.events("libutaptest:lib_add").allSatisfy { $0.int("b") == 100 })
            XCTAssertEqual(r.events("libutaptest:lib_greet").map { $0.field("s") as? String }, ["world"])
            XCTAssertEqual(r.events("libutaptest:lib_greet%return").map { $0.int("n") }, [5])
            XCTAssertFalse(r.stderr.contains("does not link"), r.stderr)
        }
        // A library the COMMAND does not link (zlib, for args_pie) is probed, and said so:
        // a silent count of 0 looked like a function that was never called.
        let unlinked = try Harness.utap(["count", "libz:deflate", "libc:malloc", "--", Harness.target("args_pie"), "3"])
        XCTAssertEqual(unlinked.status, 0, unlinked.stderr)
        let warnings = unlinked.stderr.split(separator: "\n").filter { $0.hasPrefix("utap: warning: ") }
        XCTAssertEqual(warnings.count, 1, unlinked.stderr)
        XCTAssertTrue(warnings.first?.contains("\(Harness.target("args_pie")) does not link ") == true
                      && warnings.first?.contains("/libz.so") == true, unlinked.stderr)
        // The program itself, named by its path, is no library it lacks.
        let own = try Harness.utap(["count", Harness.target("args_pie") + ":add2", "--", Harness.target("args_pie"), "3"])
        XCTAssertFalse(own.stderr.contains("warning"), own.stderr)
    }

    func testRecursionPairsEveryReturnWithItsEntry() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["fib n=arg0:s32", "fib%return ret"], "fib", ["12"])
            XCTAssertEqual(r.events("fib").count, 465)
            let returns = r.events("fib%return")
            XCTAssertEqual(returns.count, 465)
            XCTAssertEqual(returns.last?.int("ret"), 144)
            // Every return is paired with its own entry: the outermost call is the slowest.
            let latencies = returns.map { ($0["latency_ns"] as? NSNumber)!.uint64Value }
            XCTAssertEqual(latencies.max(), latencies.last)
        }
    }

    func testLatencyMatchesKnownSleeps() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["nap%return"], "sleeper", ["3"])
            let latencies = r.events("nap%return").map { ($0["latency_ns"] as? NSNumber)?.uint64Value ?? 0 }
            XCTAssertEqual(latencies.count, 3)
            for latency in latencies {
                XCTAssertGreaterThanOrEqual(latency, 20_000_000, "nap(20) sleeps at least 20 ms")
                XCTAssertLessThan(latency, 1_000_000_000)
            }
        }
    }

    func testCommandExitStatusAndOutputArePassedThrough() throws {
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["trace", "add2", "--", "/bin/sh", "-c", "echo hi; exit 7"])
            // /bin/sh has no add2: the probe is refused before anything runs.
            XCTAssertEqual(r.status, 2)
            let ok = try Harness.utap(["trace", "--format", "json", Harness.target("args_pie") + ":add2", "--",
                                       "/bin/sh", "-c", Harness.target("args_pie") + " 4; exit 7"])
            XCTAssertEqual(ok.status, 7)
            XCTAssertTrue(ok.stdout.contains("sum=18 strs=309"))
            let signalled = try Harness.utap(["trace", Harness.target("args_pie") + ":add2", "--", "/bin/sh", "-c",
                                              Harness.target("args_pie") + " 1 >/dev/null; kill -TERM $$"])
            XCTAssertEqual(signalled.status, 128 + SIGTERM, "death by signal N exits 128+N")
        }
    }

    /// Each CPU has its own ring buffer: threads that hop between CPUs every 50 calls
    /// spread their records over every ring, and their events wait in each CPU's stage
    /// (bpf/utap.bpf.c), yet each thread's events come out in the order it made them.
    /// Also with staging off (`UTAP_BPF_STAGING=0`, as on kernels before 6.10).
    func testThreadsMovingBetweenCPUsKeepTheirOrder() throws {
        let calls = 20_000
        for staging in ["1", "0"] {
            let r = try trace(["hop t=arg0:s32 i=arg1"], "migrate", [String(calls)], environment: ["UTAP_BPF_STAGING": staging])
            let cpus = sysconf(Int32(_SC_NPROCESSORS_ONLN))
            XCTAssertTrue(r.stdout.contains("total=\(2 * calls) cpus=\(min(cpus, 64))"), r.stdout)
            let events = r.events("hop")
            XCTAssertEqual(events.count, 2 * calls)
            for t in 0..<2 {
                let order = events.filter { $0.int("t") == Int64(t) }.map { $0.int("i")! }
                XCTAssertTrue(order == Array(0..<Int64(calls)), "thread \(t), staging \(staging): \(order.count) events out of order")
            }
            XCTAssertEqual(r.summary?["lost"] as? Int, 0)
        }
    }

    /// A file's entry and return probes are two links (multi-links) or several (perf
    /// events), attached and detached milliseconds apart; hits count only once all are in
    /// and until the first goes. So a trace of a busy function pairs up: at most a return
    /// of a call already under way at the start, and an entry of one under way at the end.
    func testEntriesAndReturnsPairUpFromStartToEnd() throws {
        let program = try Harness.compile("""
            #include <stdio.h>
            #include <unistd.h>
            __attribute__((noipa)) long f(long x) { return x * 2; }
            int main(void) {
                char line[8];
                printf("ready %d\\n", getpid());
                fflush(stdout);
                if (!fgets(line, sizeof line, stdin)) return 1;
                for (long i = 0, s = 0;; i++) { s += f(i); if (i % 4 == 0) usleep(10); }
            }
            """, named: "busy", for: self)
        let target = try Harness.WaitingTarget(executable: program, arguments: [])
        defer { target.kill() }
        target.release()
        for attach in ["multi", "perf"] {
            let r = try Harness.utap(["trace", "--backend", "bpf", "--format", "json", "-p", String(target.pid), "--duration", "0.3",
                                      "\(program):f", "\(program):f%return r=ret"], environment: ["UTAP_ATTACH": attach])
            XCTAssertEqual(r.status, 0, r.stderr)
            var kinds = r.events.map { $0["kind"] as! String }
            if kinds.first == "return" { kinds.removeFirst() }
            if kinds.last == "entry" { kinds.removeLast() }
            XCTAssertGreaterThan(kinds.count, 100, attach)
            let unpaired = stride(from: 0, to: kinds.count, by: 2).filter { i in
                kinds[i] != "entry" || i + 1 >= kinds.count || kinds[i + 1] != "return"
            }
            XCTAssertEqual(unpaired.count, 0, "\(attach): \(kinds.count) events, unpaired from \(unpaired.prefix(5))")
            let counted = try Harness.utap(["count", "--backend", "bpf", "--format", "json", "-p", String(target.pid),
                                            "--duration", "0.3", "\(program):f", "\(program):f%return"],
                                           environment: ["UTAP_ATTACH": attach])
            let counts = counted.records.filter { $0["type"] as? String == "count" }.map { $0["count"] as! Int }
            XCTAssertEqual(counts.count, 2, counted.stdout)
            XCTAssertLessThanOrEqual(abs(counts[0] - counts[1]), 1, "\(attach): \(counts)")
        }
    }

    func testPidSeesEveryThreadOfARunningProcess() throws {
        try Harness.eachBackend { backend in
            let target = try Harness.WaitingTarget("threads", ["2000"])
            let utap = try Harness.Background(["trace", "--format", "json", "-p", String(target.pid), "work t=arg0:s32 i=arg1"])
            let own = target.go()
            XCTAssertEqual(own.stdout, "total=8000\n")
            let r = utap.wait()
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("pid \(target.pid) exited"), r.stderr)
            let events = r.events("work")
            XCTAssertEqual(events.count, 8000)
            var perThread: [Int: Int] = [:]
            for e in events { perThread[e["tid"] as! Int, default: 0] += 1 }
            XCTAssertEqual(perThread.count, 4)
            XCTAssertTrue(perThread.values.allSatisfy { $0 == 2000 })
            XCTAssertTrue(events.allSatisfy { $0["pid"] as? Int == Int(target.pid) })
            for t in 0..<4 {
                XCTAssertEqual(events.filter { $0.int("t") == Int64(t) }.map { $0.int("i")! }, Array(0..<2000))
            }
            XCTAssertEqual(r.summary?["lost"] as? Int, 0)
        }
    }

    /// -p with a thread id (as top -H shows) traces its process, every thread, and says so.
    func testPidOfAThreadTracesItsProcess() throws {
        try Harness.eachBackend { backend in
            let target = try Harness.WaitingTarget("threads", ["50"])
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(target.pid)/task").compactMap(Int32.init)
            let thread = try XCTUnwrap(tasks.first { $0 != target.pid }, "threads starts its workers before it waits")
            let utap = try Harness.Background(["trace", "--format", "json", "-p", String(thread), "work t=arg0:s32"])
            XCTAssertEqual(target.go().stdout, "total=200\n")
            let r = utap.wait()
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("utap: warning: \(thread) is a thread of process \(target.pid): tracing the process"), r.stderr)
            XCTAssertTrue(r.stderr.contains("Tracing 1 probe in pid \(target.pid) with \(backend)."), r.stderr)
            XCTAssertEqual(Set(r.events("work").compactMap { $0.int("t") }), [0, 1, 2, 3], backend)
            XCTAssertEqual(r.events("work").count, 200, backend)
        }
    }

    /// -p with a library the process has not loaded yet: the file it would load (found
    /// through its LD_LIBRARY_PATH here) is probed, with a warning, and its calls are seen
    /// once it dlopens it.
    func testPidProbesALibraryItLoadsLater() throws {
        try Harness.eachBackend { backend in
            let host = Harness.target("ptrace/dlhost")
            let directory = (host as NSString).deletingLastPathComponent
            let target = try Harness.WaitingTarget(executable: "/usr/bin/env",
                                                   arguments: ["LD_LIBRARY_PATH=/nonexistent:" + directory, host, "1", "--wait"])
            let utap = try Harness.Background(["trace", "--format", "json", "-p", String(target.pid), "libdlprobe:lib_probe x=arg0:s32"])
            XCTAssertEqual(target.go().stdout, "round 1 sum=306 lib_calls=4 unloaded=1\n")
            let r = utap.wait()
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("pid \(target.pid) has not loaded libdlprobe (yet)"), r.stderr)
            XCTAssertEqual(r.events("libdlprobe:lib_probe").map { $0.int("x")! }, [0, 1, 2, 3], backend)
        }
    }

    func testSigintAndSigtermDetachAndLeaveTheProcessRunning() throws {
        try Harness.eachBackend { backend in
            let target = try Harness.WaitingTarget("forever", [])
            defer { target.kill() }
            target.release()
            for signo in [SIGINT, SIGTERM, SIGHUP] {
                let utap = try Harness.Background(["trace", "-p", String(target.pid), "tick"])
                usleep(200_000)
                let r = utap.stop(signo)
                XCTAssertEqual(r.status, 0, "signal \(signo)")
                let lines = r.stdout.split(separator: "\n").filter { $0.contains("tick") }
                let ticks = lines.count
                XCTAssertTrue(r.stderr.contains("utap: \(ticks) events, 0 lost"), r.stderr)
                // TIME counts from before the probes went in, so no hit comes before it.
                XCTAssertFalse(lines.contains { $0.drop { $0 == " " }.hasPrefix("-") }, "\(lines.prefix(3))")
                XCTAssertGreaterThan(ticks, 10)
                XCTAssertEqual(kill(target.pid, 0), 0, "the traced process survives utap")
            }
        }
    }

    func testMaxEventsAndDuration() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["add2"], "args_pie", ["100"], options: ["--format", "json", "--max-events", "7"])
            XCTAssertEqual(r.events.count, 7)
            XCTAssertEqual(r.summary?["events"] as? Int, 7)
            XCTAssertTrue(r.stdout.contains("sum=14850 strs=309"), "the command runs to its end untraced")

            let target = try Harness.WaitingTarget("forever", [])
            defer { target.kill() }
            let start = Date()
            let timed = try Harness.utap(["trace", "--duration", "0.5", "-p", String(target.pid), "tick"])
            XCTAssertEqual(timed.status, 0)
            XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.5)
        }
    }

    /// A reader that stops reading (a paused `| less`): utap blocks in write(2), yet
    /// --duration still ends the trace and detaches, and says what it could not write.
    /// (It used to block until the reader read again, with ptrace holding the target.)
    func testAReaderThatStopsReadingDoesNotHoldTheStop() throws {
        let fifo = NSTemporaryDirectory() + "utap-stuck-\(getpid())"
        unlink(fifo)
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        defer { unlink(fifo) }
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)  // open, never read
        defer { close(reader) }
        try Harness.eachBackend { backend in
            let target = try Harness.WaitingTarget("forever", [])
            defer { target.kill() }
            target.release()
            let start = Date()
            // Two seconds of ticks (one a ms) are more than a pipe holds.
            let command = Harness.withBackend(["trace", "--duration", "2", "-p", String(target.pid), "tick"])
            let r = try Harness.run("/bin/sh", ["-c", "exec \"$0\" \"$@\" > '\(fifo)'", Harness.utap] + command, timeout: 20)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertLessThan(Date().timeIntervalSince(start), 6, "\(backend): the stop waited for the reader")
            XCTAssertTrue(r.stderr.contains("utap: the output's reader stopped reading: "), r.stderr)
            XCTAssertEqual(kill(target.pid, 0), 0, "the target runs on")
            // Empty the pipe for the next backend.
            var sink = [UInt8](repeating: 0, count: 1 << 16)
            while read(reader, &sink, sink.count) > 0 {}
        }
    }

    func testOutputFileAndPipeIntoHead() throws {
        try Harness.eachBackend { backend in
            let path = NSTemporaryDirectory() + "utap-out-\(getpid()).json"
            defer { unlink(path) }
            let r = try Harness.utap(["trace", "--format", "json", "-o", path, "add2", "--", Harness.target("args_pie"), "20"])
            XCTAssertEqual(r.status, 0)
            let written = try String(contentsOfFile: path, encoding: .utf8)
            XCTAssertEqual(written.split(separator: "\n").filter { $0.contains("\"event\"") }.count, 20)
            XCTAssertEqual(r.stdout, "sum=570 strs=309\n", "events go to the file, the command's output to stdout")

            // A reader that goes away ends the trace quietly, with status 0.
            let target = try Harness.WaitingTarget("forever", [])
            defer { target.kill() }
            target.release()
            let head = try Harness.run("/bin/bash", ["-c", "set -o pipefail; '\(Harness.utap)' trace --format json -p \(target.pid) tick | head -1"])
            XCTAssertEqual(head.status, 0, head.stderr)
            XCTAssertEqual(head.stdout.split(separator: "\n").count, 1)
            XCTAssertTrue(head.stdout.contains(#""probe":"tick""#))
            XCTAssertEqual(kill(target.pid, 0), 0)
        }
    }

    /// A reader that cannot keep up loses events, and says exactly how many: what arrived
    /// plus what was reported lost is every call the target made.
    /// `utap trace --format json --buffer-mb MB -o FIFO 'add2 a=arg0' -- args_pie CALLS`
    /// whose FIFO is read only once the command has finished: utap blocks writing while
    /// the ring fills, however fast or slow the host. Returns utap's run and what came out
    /// of the FIFO.
    private func traceThroughStalledReader(bufferMb: Int, calls: Int) throws -> (run: Harness.Result, out: Harness.Result) {
        let dir = NSTemporaryDirectory() + "utap-stalled-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // args_pie prints "sum=" last, just before it exits.
        let stall = "until grep -q sum= '\(dir)/stdout'; do sleep 0.1; done; sleep 0.5"
        let script = """
            mkfifo '\(dir)/fifo'
            (exec 3<'\(dir)/fifo'; \(stall); cat <&3 > '\(dir)/out') &
            '\(Harness.utap)' trace --format json --buffer-mb \(bufferMb) -o '\(dir)/fifo' \
                'add2 a=arg0' -- '\(Harness.target("args_pie"))' \(calls) > '\(dir)/stdout'
            status=$?; wait; exit $status
            """
        let r = try Harness.run("/bin/bash", ["-c", script], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = Harness.Result(status: 0, stdout: "", stderr: "",
                                 output: try String(contentsOfFile: dir + "/out", encoding: .utf8))
        return (r, out)
    }

    func testLossIsCountedExactly() throws {
        let calls = 50_000
        // A 1 MiB ring holds about 14,000 records: most of the calls are lost.
        let (r, out) = try traceThroughStalledReader(bufferMb: 1, calls: calls)
        let lostInStream = out.records.filter { $0["type"] as? String == "lost" }.reduce(0) { $0 + ($1["count"] as! Int) }
        let summary = try XCTUnwrap(out.summary)
        XCTAssertGreaterThan(lostInStream, 0, "a 1 MiB ring and a stalled reader must lose events")
        XCTAssertEqual(summary["lost"] as? Int, lostInStream)
        XCTAssertEqual(summary["events"] as? Int, out.events("add2").count)
        XCTAssertEqual(out.events("add2").count + lostInStream, calls)
        XCTAssertTrue(r.stderr.contains("utap: \(out.events("add2").count) events, \(lostInStream) lost"), r.stderr)
    }

    /// The command exits with far more records in the ring than one consume pass hands
    /// over (16384): all of them still belong to the trace (they were once dropped
    /// silently, the summary saying 0 lost).
    func testEverythingInTheRingIsDeliveredAfterTheCommandExits() throws {
        let calls = 60_000
        // 32 MiB holds every record: nothing may be lost.
        let (r, out) = try traceThroughStalledReader(bufferMb: 32, calls: calls)
        XCTAssertEqual(out.events("add2").count, calls)
        let values = out.events("add2").map { $0.int("a") }
        let misplaced = values.enumerated().first { $0.element != Int64($0.offset) }
        XCTAssertNil(misplaced, "event \(misplaced?.offset ?? 0) has a=\(String(describing: misplaced?.element))")
        XCTAssertEqual(out.summary?["events"] as? Int, calls)
        XCTAssertEqual(out.summary?["lost"] as? Int, 0)
        XCTAssertTrue(r.stderr.contains("utap: \(calls) events, 0 lost"), r.stderr)
    }

    /// When utap ends the trace itself (here: the -p process exited), what it cannot write
    /// within its drain budget (UTAP_DRAIN_BUDGET_MS, 0 here) is counted as lost, exactly:
    /// nothing goes missing silently, and a Ctrl-C on a flood ends at once.
    func testRecordsLeftAfterTheDrainBudgetAreCountedAsLost() throws {
        let calls = 60_000
        let dir = NSTemporaryDirectory() + "utap-budget-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The FIFO is read only once the target is gone: utap, blocked writing, sees the
        // exit with most records still in the ring.
        let script = """
            cd '\(dir)'; mkfifo fifo go
            (exec 3<fifo; until [ -e done ]; do sleep 0.1; done; cat <&3 > out) &
            exec 4<>go
            '\(Harness.target("args_pie"))' \(calls) --wait < go > target.out &
            target=$!
            until grep -q ready target.out; do sleep 0.05; done
            UTAP_DRAIN_BUDGET_MS=0 '\(Harness.utap)' trace --format json -o fifo -p $target 'add2 a=arg0' 2> utap.err &
            utap=$!
            until grep -q 'Ctrl-C to stop' utap.err; do sleep 0.05; done
            echo >&4
            wait $target; touch done
            wait $utap; status=$?; wait; cat utap.err >&2; exit $status
            """
        let r = try Harness.run("/bin/bash", ["-c", script], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = Harness.Result(status: 0, stdout: "", stderr: "",
                                 output: try String(contentsOfFile: dir + "/out", encoding: .utf8))
        let lostInStream = out.records.filter { $0["type"] as? String == "lost" }.reduce(0) { $0 + ($1["count"] as! Int) }
        XCTAssertGreaterThan(lostInStream, 0, "a zero budget leaves records unwritten")
        XCTAssertEqual(out.events("add2").count + lostInStream, calls)
        XCTAssertEqual(out.summary?["lost"] as? Int, lostInStream)
        XCTAssertTrue(r.stderr.contains("events recorded before the stop were not written (counted as lost)"), r.stderr)
    }

    /// fib keeps frame pointers; it exits before its events are read, so its frames are
    /// named through the build IDs and file offsets the kernel recorded (bpf). The same
    /// stacks on ptrace: at a function's entry the caller is the return address on top of
    /// the stack, which ptrace's walk left out until it did as the kernel does.
    func testStacksNameTheCallerChainAfterTheProcessExited() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["fib n=arg0:s32"], "fib", ["4"], options: ["--format", "json", "--stack"])
            let fib = Harness.target("fib")
            let stacks = r.events("fib").map { $0["stack"] as? [String] ?? [] }
            XCTAssertEqual(r.events("fib").map { $0.int("n")! }, [4, 3, 2, 1, 0, 1, 2, 1, 0])
            // Call depth of each call of fib(4), in call order.
            let depths = stacks.map { $0.prefix { $0.contains(" fib+0x") }.count }
            XCTAssertEqual(depths, [1, 2, 3, 4, 4, 3, 2, 3, 3], "\(stacks)")
            for stack in stacks {
                XCTAssertTrue(stack[0].hasSuffix(" fib+0x0 (\(fib))"), stack[0])
                let caller = stack[stack.prefix { $0.contains(" fib+0x") }.count]
                XCTAssertTrue(caller.contains(" main+0x") && caller.hasSuffix("(\(fib))"), caller)
                XCTAssertTrue(stack.allSatisfy { $0.hasPrefix("0x") })
            }
        }
    }

    func testStacksOfARunningProcessUseItsMappings() throws {
        try Harness.eachBackend { backend in
            let target = try Harness.WaitingTarget("forever", [])
            defer { target.kill() }
            target.release()
            let r = try Harness.utap(["trace", "--format", "json", "--stack", "--max-events", "3", "-p", String(target.pid), "tick"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let stacks = r.events("tick").map { $0["stack"] as? [String] ?? [] }
            XCTAssertEqual(stacks.count, 3)
            for stack in stacks {
                XCTAssertTrue(stack.first?.hasSuffix(" tick+0x0 (\(Harness.target("forever")))") == true, "\(stack)")
            }
        }
    }

    /// Output to a full filesystem: one clear error, the count of what was not written,
    /// probes detached, the command left to finish, exit status 1.
    func testFullFilesystemFailsCleanly() throws {
        try Harness.eachBackend { backend in
            let dir = NSTemporaryDirectory() + "utap-full-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            XCTAssertEqual(try Harness.run("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir]).status, 0)
            defer { _ = try? Harness.run("/bin/umount", [dir]) }
            let r = try Harness.utap(["trace", "--format", "json", "-o", dir + "/out.json", "add2 a=arg0 b=arg1",
                                      "--", Harness.target("args_pie"), "20000"])
            XCTAssertEqual(r.status, 1)
            XCTAssertEqual(r.stdout, "sum=599970000 strs=309\n", "the command ran to its end")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 2, r.stderr)
            XCTAssertTrue(lines.last?.hasPrefix("utap: error: write output: No space left on device: ") == true, r.stderr)
            // What was recorded but still waiting behind the failed write is counted too.
            XCTAssertTrue(lines.last?.contains(" bytes of events could not be written, and ") == true
                          && lines.last?.hasSuffix(" more events recorded were dropped; probes detached") == true, r.stderr)
        }
    }

    func testIFuncResolvesToTheImplementationInUse() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["libc:strlen s=arg0:str"], "args_pie")
            let seen = r.events("libc:strlen").compactMap { $0.field("s") as? String }
            // take_str calls strlen on each non-NULL argument; libc may call it too.
            XCTAssertTrue(seen.contains("hello"), "\(seen)")
            XCTAssertTrue(seen.contains(""), "\(seen)")
        }
    }

    func testTextOutputIsAligned() throws {
        try Harness.eachBackend { backend in
            let r = try trace(["add2 a=arg0", "take_s64%return ret"], "args_pie", ["2"], options: [])
            let lines = r.trace.split(separator: "\n").filter { $0.contains("args_pie") }
            XCTAssertEqual(lines.count, 3)
            XCTAssertTrue(r.trace.hasPrefix("TIME(s)"))
            let probeColumn = lines.map { $0.range(of: "add2")?.lowerBound ?? $0.range(of: "take_s64")!.lowerBound }
            let offsets = zip(lines, probeColumn).map { $0.0.distance(from: $0.0.startIndex, to: $0.1) }
            XCTAssertEqual(Set(offsets).count, 1, "probe column aligned: \(lines)")
        }
    }
}
