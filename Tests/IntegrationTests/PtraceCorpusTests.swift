import Foundation
import Glibc
import XCTest

/// The ptrace backend on the programs of tests/targets/ptrace (ptrace-xol.md §4): exact
/// hit counts, and the program's output and exit status identical to an untraced run.
final class PtraceCorpusTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private static func program(_ name: String) -> String { Harness.target("ptrace/" + name) }

    /// `utap count --format json --backend ptrace` of `program args` (`name`: of this
    /// corpus, or a path); the counts by probe name. Asserts the program printed what it
    /// prints untraced and exited the same.
    @discardableResult
    private func count(_ probes: [String], _ name: String, _ args: [String], options: [String] = [],
                       timeout: TimeInterval = 300,
                       file: StaticString = #filePath, line: UInt = #line) throws -> [String: Int] {
        let program = name.hasPrefix("/") ? name : Self.program(name)
        let plain = try Harness.run(program, args)
        let path = NSTemporaryDirectory() + "utap-corpus-\(getpid()).out"
        defer { unlink(path) }
        var traced = try Harness.run(Harness.utap, ["count", "--backend", "ptrace", "--format", "json", "-o", path] + options
                                     + probes.map { "\(program):\($0)" } + ["--", program] + args, timeout: timeout)
        XCTAssertEqual(traced.status, plain.status, "exit status: \(traced.stderr)", file: file, line: line)
        XCTAssertEqual(traced.stdout, plain.stdout, "the program's output", file: file, line: line)
        traced.output = try String(contentsOfFile: path, encoding: .utf8)
        var counts: [String: Int] = [:]
        for record in traced.records where record["type"] as? String == "count" {
            let probe = (record["probe"] as? String ?? "").replacingOccurrences(of: program + ":", with: "")
            counts[probe, default: 0] += record["count"] as? Int ?? 0
        }
        return counts
    }

    /// One function per instruction class, probed on its first instruction: emulated
    /// (nops, push, mov %rsp,%rbp, sub, jmp, jcc, call, ret), run out of line (rip-relative
    /// loads, stores, lea, SSE, AVX, rep movsb, pushf, jmp *reg) or single-stepped (call
    /// *reg), faults under handlers (reported at the original address, si_addr too). The
    /// program checks every result itself; syscall and lock are refused.
    func testInstructionZoo() throws {
        let classes = ["nop", "nop5", "push_rbx", "push_r12", "mov_rbp", "sub_imm8", "sub_imm32", "jmp8", "jmp32",
                       "call", "ret", "rip_load", "rip_store", "rip_store_imm", "rip_lea", "sse_load", "rep_movsb",
                       "pushf", "call_reg", "jmp_reg", "idiv", "null_load"]
        var expected = Dictionary(uniqueKeysWithValues: classes.map { ("zoo_" + $0, 25) })
        expected["zoo_jz"] = 50
        let avx = (try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)).contains(" avx ")
        expected["zoo_avx_load"] = avx ? 25 : 0
        let counts = try count(expected.keys.sorted(), "zoo", ["25"])
        XCTAssertEqual(counts, expected)

        for (refused, reason) in [("zoo_syscall", "system instruction 0f 05"), ("zoo_lock", "lock prefix")] {
            let r = try Harness.utap(["trace", "--backend", "ptrace", "\(Self.program("zoo")):\(refused)", "--",
                                      Self.program("zoo")])
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("utap: error: probe '\(Self.program("zoo")):\(refused)': the ptrace backend cannot probe this instruction (\(reason))"),
                          r.stderr)
            XCTAssertEqual(r.stdout, "", "the program never ran")
        }
    }

    /// 8 threads × 1e6 hits (`make stress`; 1e5 in `make test`: a hit costs 8-70 µs on
    /// this shared VM), exactly; 1000 short-lived threads, each seen.
    func testThreadsExactly() throws {
        let perThread = Harness.stress ? 1_000_000 : 100_000
        XCTAssertEqual(try count(["probe_me"], "loop", [String(perThread), "--threads", "8"], timeout: 3600),
                       ["probe_me": 8 * perThread])
        XCTAssertEqual(try count(["probe_me"], "loop", ["--cycles", "1000"]), ["probe_me": 1000])
    }

    /// sigqueue values arrive in order with SI_QUEUE; a 10 µs itimer storm lands inside
    /// breakpoint handling without a lost or extra hit; a handler that calls the probed
    /// function.
    func testSignalsAroundProbes() throws {
        XCTAssertEqual(try count(["probe_me"], "signals", ["sigqueue", "1000"]), ["probe_me": 1000])
        XCTAssertEqual(try count(["probe_me"], "signals", ["itimer", "10000", "10", "1000"]), ["probe_me": 10000])
        XCTAssertEqual(try count(["probe_me"], "signals", ["handler", "100"]), ["probe_me": 100])
    }

    /// fork, vfork, posix_spawn, re-exec and exec from a non-leader thread: children are
    /// cleaned and let go, or followed; an exec'd image gets its probes again.
    func testForkVforkSpawnAndExec() throws {
        let cases: [(String, Int, Int)] = [("fork", 3, 6), ("vfork", 0, 1), ("spawn", 0, 2), ("reexec", 6, 6),
                                           ("thread-exec", 6, 6)]
        for (mode, alone, followed) in cases {
            XCTAssertEqual(try count(["probe_me"], "forkexec", [mode])["probe_me"], alone, mode)
            XCTAssertEqual(try count(["probe_me"], "forkexec", [mode], options: ["--follow-forks"])["probe_me"], followed,
                           "\(mode) --follow-forks")
        }
    }

    /// A library's constructor and function across dlopen → dlclose → dlopen.
    func testDlopenDlcloseDlopen() throws {
        let program = Self.program("dlhost")
        let library = Self.program("libdlprobe.so")
        let path = NSTemporaryDirectory() + "utap-dl-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap(["trace", "--backend", "ptrace", "--format", "json", "-o", path, "\(library):lib_probe x=arg0:s32",
                                  "\(library):lib_probe%return ret:s32", "--", program])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, try Harness.run(program, []).stdout)
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(r.events("\(library):lib_probe").map { $0.int("x")! }, [0, 1, 2, 3, 0, 1, 2, 3])
        XCTAssertEqual(r.events("\(library):lib_probe%return").map { $0.int("ret")! }, [100, 101, 102, 103, 100, 101, 102, 103])
    }

    /// fib(20) entries and returns; a tail call (two returns through one slot); longjmp
    /// out of depth 5 (no returns, nothing stale left); a return from a blocking read.
    func testAwkwardReturns() throws {
        let probes = ["fib", "fib%return", "tail_a", "tail_a%return", "tail_b", "tail_b%return", "deep", "deep%return",
                      "blocking_read", "blocking_read%return"]
        let counts = try count(probes, "returns", [])
        XCTAssertEqual(counts, ["fib": 21891, "fib%return": 21891, "tail_a": 10, "tail_a%return": 10, "tail_b": 10,
                                "tail_b%return": 10, "deep": 50, "deep%return": 0, "blocking_read": 1,
                                "blocking_read%return": 1])
        // Values: fib's returns are Fibonacci numbers; both functions of the tail call
        // report tail_b's result.
        let program = Self.program("returns")
        let path = NSTemporaryDirectory() + "utap-ret-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap(["trace", "--backend", "ptrace", "--format", "json", "-o", path, "\(program):fib n=arg0:s32",
                                  "\(program):fib%return ret", "\(program):tail_a%return ret", "\(program):tail_b%return ret",
                                  "--", program, "fib", "10"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        func fib(_ n: Int64) -> Int64 { n < 2 ? n : fib(n - 1) + fib(n - 2) }
        let entries = r.events("\(program):fib").map { $0.int("n")! }
        XCTAssertEqual(entries.count, 177)
        XCTAssertEqual(r.events("\(program):fib%return").map { $0.int("ret")! }.sorted(), entries.map(fib).sorted())
        r = try Harness.utap(["trace", "--backend", "ptrace", "--format", "json", "-o", path, "\(program):tail_a%return ret",
                              "\(program):tail_b%return ret", "--", program, "tail", "4"])
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(r.events("\(program):tail_a%return").map { $0.int("ret")! },
                       r.events("\(program):tail_b%return").map { $0.int("ret")! })
        XCTAssertEqual(r.events.map { $0["probe"] as! String }, Array(repeating: ["\(program):tail_b%return", "\(program):tail_a%return"], count: 4).flatMap { $0 },
                       "the inner function returns first")
    }

    /// Three ucontext coroutines, their stacks in one heap mapping, switch inside
    /// hijacked calls four deep (`switch_to` tail-calls swapcontext, which saves the
    /// trampoline as the return address): a call pending on another stack is kept
    /// whatever its address, and returns when its context resumes, on another thread too.
    /// A coroutine never resumed never returns from its last calls. (The kernel's
    /// uretprobes pair returns by stack order: bpf breaks this program.)
    func testCoroutinesSwitchingInsideHijackedCalls() throws {
        let probes = ["switch_to", "switch_to%return", "descend", "descend%return"]
        let hijack = ["--return-mode", "hijack"]
        for mode in ["finish", "migrate"] {
            XCTAssertEqual(try count(probes, "coroutines", ["10", mode], options: hijack),
                           ["switch_to": 30, "switch_to%return": 30, "descend": 120, "descend%return": 120], mode)
        }
        XCTAssertEqual(try count(probes, "coroutines", ["10", "abandon"], options: hijack),
                       ["switch_to": 30, "switch_to%return": 27, "descend": 120, "descend%return": 108])
    }

    /// 100 rounds of longjmp out of three hijacked frames, each round 256 bytes lower on
    /// the stack, which is overwritten after each; then calls from below them all. No
    /// later call is at or above a left frame's slot, the test that dropped them before:
    /// the 300 left behind are dropped once the return stack fills (their slots no longer
    /// hold the trampoline), and none of the returns after them is lost.
    func testLongjmpsFromEverLowerFramesDoNotFillTheReturnStack() throws {
        let program = try Harness.compile("""
            #include <alloca.h>
            #include <setjmp.h>
            #include <stdio.h>
            #include <string.h>
            static jmp_buf back;
            volatile long sink;
            __attribute__((noipa)) void leave(int d) { sink = d; if (d == 0) longjmp(back, 1); leave(d - 1); sink = 0; }
            __attribute__((noipa)) long leaf(long x) { sink = x; return x + 1; }
            __attribute__((noipa)) void scrub(void) { char page[65536]; memset(page, 0, sizeof page); __asm__ volatile("" :: "r"(page) : "memory"); }
            __attribute__((noipa)) void leave_at(int depth) {
                volatile char *pad = alloca(depth);
                pad[0] = 0;
                if (!setjmp(back)) leave(2);
            }
            __attribute__((noipa)) long leaves_below(int depth) {
                volatile char *pad = alloca(depth);
                pad[0] = 0;
                long sum = 0;
                for (int i = 0; i < 10; i++) sum += leaf(i);
                return sum;
            }
            int main(void) {
                for (int r = 0; r < 100; r++) { leave_at(256 * r + 16); scrub(); }
                printf("sum=%ld\\n", leaves_below(256 * 100 + 4096));
                return 0;
            }
            """, named: "longjmps", for: self)
        XCTAssertEqual(try count(["leave", "leave%return", "leaf%return"], program, [], options: ["--return-mode", "hijack"]),
                       ["leave": 300, "leave%return": 0, "leaf%return": 10], "none lost")
    }

    /// A program that calls its hijacked return address (the trampoline) has no call to
    /// return to: it gets SIGILL, as under the kernel's uretprobes, and utap says why.
    func testAJumpIntoTheTrampolineIsNamed() throws {
        let program = try Harness.compile("""
            #include <stdio.h>
            extern char __executable_start[], etext[];
            __attribute__((noipa)) void *return_address(void) { return __builtin_return_address(0); }
            int main(void) {
                char *to = return_address();
                printf("outside the text: %d\\n", to < __executable_start || to >= etext);
                fflush(stdout);
                if (to < __executable_start || to >= etext) ((void (*)(void))to)();
                return 0;
            }
            """, named: "trampoline", for: self)
        let r = try Harness.utap(["count", "--backend", "ptrace", "--return-mode", "hijack",
                                  "\(program):return_address%return", "--", program])
        XCTAssertEqual(r.status, 128 + SIGILL, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix("outside the text: 1\n"), r.stdout)
        XCTAssertTrue(r.stderr.contains(" returned into the return-probe trampoline with no call pending there: it gets SIGILL\n"),
                      r.stderr)
    }

    /// utap stops (--max-events 1: right after the entry) while the thread is blocked in
    /// read() inside a return-probed function, 400 ms before its return: the hijacked
    /// return address is put back, and the program finishes as it would untraced.
    /// (A --duration here raced the program's start on a loaded machine.)
    func testDetachWhileBlockedInAProbedRead() throws {
        let program = Self.program("returns")
        let path = NSTemporaryDirectory() + "utap-block-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap(["trace", "--backend", "ptrace", "--format", "json", "-o", path, "--max-events", "1",
                                  "\(program):blocking_read", "\(program):blocking_read%return", "--", program, "block"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "blocking_read ret=120\n")
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(r.events("\(program):blocking_read").count, 1)
        XCTAssertEqual(r.events("\(program):blocking_read%return").count, 0, "it returned after the detach")
    }

    /// SIGSTOP/SIGCONT storms at a 4-thread program under probes: exact counts, output
    /// unchanged, and the stops still stop it (group-stops are kept, not resumed).
    func testStopContStorms() throws {
        let program = Self.program("loop")
        let path = NSTemporaryDirectory() + "utap-storm-\(getpid()).out"
        defer { unlink(path) }
        let utap = Process()
        utap.executableURL = URL(fileURLWithPath: Harness.utap)
        utap.arguments = ["count", "--backend", "ptrace", "--format", "json", "-o", path, "\(program):probe_me",
                          "--", program, "20000", "--threads", "4"]
        let out = Pipe()
        utap.standardOutput = out
        utap.standardError = FileHandle.nullDevice
        try utap.run()
        var child: Int32 = 0
        for _ in 0..<2000 where child == 0 {
            let children = (try? String(contentsOfFile: "/proc/\(utap.processIdentifier)/task/\(utap.processIdentifier)/children",
                                        encoding: .utf8)) ?? ""
            child = Int32(children.split(separator: " ").first ?? "") ?? 0
            usleep(1000)
        }
        XCTAssertNotEqual(child, 0, "the command started")
        var stoppedSeen = 0
        for _ in 0..<100 where utap.isRunning {
            Glibc.kill(child, SIGSTOP)
            usleep(2000)
            let stat = (try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8)) ?? ""
            if stat.contains(") T ") || stat.contains(") t ") { stoppedSeen += 1 }
            Glibc.kill(child, SIGCONT)
            usleep(1000)
        }
        utap.waitUntilExit()
        XCTAssertEqual(utap.terminationStatus, 0)
        XCTAssertGreaterThan(stoppedSeen, 0, "SIGSTOP stopped it")
        XCTAssertEqual(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
                       "threads=4 calls=80000 sum=799960000\n")
        let records = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(records.contains(#""count":80000"#), records)
    }

    /// utap SIGKILLed while probes are in place leaves int3s behind (nothing can remove
    /// them); the next utap finds the stale 0xCC and refuses, naming it, instead of
    /// treating it as the program's byte.
    func testStaleBreakpointAfterSIGKILLIsDetected() throws {
        let forever = Harness.target("forever")
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        target.release()
        // main never runs again: its stale int3 is harmless, and visible.
        let first = try Harness.Background(["trace", "--backend", "ptrace", "-p", String(target.pid), "\(forever):main"])
        _ = first.stop(SIGKILL)
        let r = try Harness.utap(["trace", "--backend", "ptrace", "-p", String(target.pid), "\(forever):main", "\(forever):tick"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("utap: error: probe '\(forever):main': pid \(target.pid): 0x"), r.stderr)
        XCTAssertTrue(r.stderr.contains("memory already holds int3 (0xcc)"), r.stderr)
        XCTAssertTrue(r.stderr.contains("utap: hint: another debugger's breakpoint, or a stale one left by a killed tracer"), r.stderr)
        let status = try String(contentsOfFile: "/proc/\(target.pid)/status", encoding: .utf8)
        XCTAssertTrue(status.contains("TracerPid:\t0\n"), "nothing left attached")
        usleep(20_000)
        XCTAssertEqual(Glibc.kill(target.pid, 0), 0, "still running")
        XCTAssertEqual(try TextCheck.differences(pid: target.pid, path: forever).count, 1, "only the stale int3 at main")
    }

    /// A process under strace is refused, naming its tracer.
    func testAlreadyTracedIsRefusedNamingTheTracer() throws {
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        let strace = Process()
        strace.executableURL = URL(fileURLWithPath: "/usr/bin/strace")
        strace.arguments = ["-q", "-o", "/dev/null", "-p", String(target.pid)]
        try strace.run()
        defer { strace.terminate(); strace.waitUntilExit() }
        for _ in 0..<500 {
            if (try? String(contentsOfFile: "/proc/\(target.pid)/status", encoding: .utf8))?.contains("TracerPid:\t\(strace.processIdentifier)\n") == true { break }
            usleep(2000)
        }
        let r = try Harness.utap(["trace", "--backend", "ptrace", "-p", String(target.pid), "tick"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("utap: error: pid \(target.pid): already traced by pid \(strace.processIdentifier) (strace)"),
                      r.stderr)
    }
}
