import Foundation
import Glibc
import XCTest

/// The ptrace backend against the bpf one and on its own: the same events, the fallback
/// when BPF is refused, and a traced program left exactly as it was.
final class PtraceTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    /// `utap trace --format json` of a command under one backend; the events as
    /// comparable lines (time, latency, pid and tid aside), sorted: a multiset.
    private func events(_ backend: String, _ probes: [String], _ target: String, _ args: [String],
                        extra: [String] = []) throws -> (events: [String], stdout: String, status: Int32) {
        let path = NSTemporaryDirectory() + "utap-diff-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.run(Harness.utap, ["trace", "--backend", backend, "--format", "json", "-o", path] + extra
                                + probes + ["--", target] + args)
        XCTAssertEqual(r.status, 0, "\(backend): \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("with \(backend). Ctrl-C to stop."), r.stderr)
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        let lines = r.events.map { event -> String in
            var kept = event
            for key in ["ts_ns", "latency_ns", "pid", "tid"] { kept[key] = nil }
            kept["has_latency"] = event["latency_ns"] != nil
            let data = try! JSONSerialization.data(withJSONObject: kept, options: [.sortedKeys])
            return String(decoding: data, as: UTF8.self)
        }
        return (lines.sorted(), r.stdout, r.status)
    }

    /// Issue 3 item 4: the same targets and probes give the same multiset of events under
    /// both backends: every build of the args target (emulated and out-of-line sites,
    /// strings, every integer width, returns by hijack), a library, four threads,
    /// recursion, C++ returns on `ret` sites.
    func testBothBackendsProduceTheSameEvents() throws {
        let argsProbes = ["add2 a=arg0 b=arg1", "add2%return r=ret", "first_call x=arg0:s32", "first_call%return ret:s32",
                          "take_ints a=arg0:s8 b=arg1:u8 c=arg2:s16 d=arg3:u16 e=arg4:s32 f=arg5:u32",
                          "take_s64 a=arg0 b=arg1:u64", "take_s64%return ret", "take_str s=arg0:str[8]",
                          "take_str%return ret:s32", "is_even v=arg0:s32", "is_even%return ret:bool"]
        var cases: [(probes: [String], target: String, args: [String])] = []
        for build in ["args_pie", "args_nopie", "args_stripped", "args_debuglink", "args_minidebuginfo", "args_O0", "args_clang"] {
            cases.append((argsProbes.map { "\(Harness.target(build)):\($0)" }, build, ["300"]))
        }
        cases.append((["libutaptest:lib_add a=arg0:s32 b=arg1:s32", "libutaptest:lib_add%return ret:s32",
                       "libutaptest:lib_greet s=arg0:str"], "uselib", ["100"]))
        cases.append((["\(Harness.target("threads")):work a=arg0 b=arg1", "\(Harness.target("threads")):work%return ret"],
                      "threads", ["2000"]))
        cases.append((["\(Harness.target("fib")):fib n=arg0:s32", "\(Harness.target("fib")):fib%return ret"], "fib", ["14"]))
        cases.append((["\(Harness.target("exceptions")):_Z6middlei%return r=ret:s32",
                       "\(Harness.target("exceptions")):_Z6middlei i=arg0:s32"], "exceptions", ["40"]))
        for (probes, target, args) in cases {
            let bpf = try events("bpf", probes, Harness.target(target), args)
            let ptrace = try events("ptrace", probes, Harness.target(target), args)
            XCTAssertGreaterThan(bpf.events.count, 0, target)
            XCTAssertEqual(bpf.events.count, ptrace.events.count, target)
            XCTAssertEqual(bpf.events, ptrace.events, target)
            XCTAssertEqual(bpf.stdout, ptrace.stdout, "\(target): the program's output")
        }
    }

    /// Recursion deeper than the 64 pending returns a thread keeps: both backends see the
    /// innermost 64 returns and count the other 37 as lost.
    func testReturnsBeyondTheDepthLimitAreCountedLost() throws {
        let deep = try Harness.compile("#include <stdio.h>\n__attribute__((noinline)) long down(long n) { return n == 0 ? 0 : 1 + down(n - 1); }\nint main(void) { printf(\"%ld\\n\", down(100)); return 0; }\n",
                                       named: "deep", flags: ["-O1", "-fno-optimize-sibling-calls"], for: self)
        try Harness.eachBackend { backend in
            let r = try Harness.utap(["trace", "--format", "json", "\(deep):down%return ret", "--", deep])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.events.count, 64, backend)
            XCTAssertEqual(r.summary?["lost"] as? Int, 37, backend)
            XCTAssertTrue(r.stdout.split(separator: "\n").contains("100"), "the program's own line: \(r.stdout)")

            // count follows the same returns, and says what it missed (bpf said nothing).
            let count = try Harness.utap(["count", "--return-mode", "hijack", "\(deep):down%return", "--", deep])
            XCTAssertTrue(count.stdout.contains("down%return  64\n"), "\(backend): \(count.stdout)")
            XCTAssertTrue(count.stderr.contains("utap: warning: 37 hits could not be counted (a thread had 64 calls pending"), count.stderr)

            // On ret sites every return is seen: 101 events, none lost, 64 with a latency;
            // a latency histogram loses the 37 it cannot time.
            let sites = try Harness.utap(["trace", "--format", "json", "--return-mode", "sites", "\(deep):down%return ret",
                                          "--", deep])
            XCTAssertEqual(sites.events.count, 101, backend)
            XCTAssertEqual(sites.summary?["lost"] as? Int, 0, backend)
            XCTAssertEqual(sites.events.filter { $0["latency_ns"] != nil }.count, 64, backend)
            let latency = try Harness.utap(["latency", "--return-mode", "sites", "\(deep):down", "--", deep])
            XCTAssertTrue(latency.stdout.contains("count=64 "), "\(backend): \(latency.stdout)")
            XCTAssertTrue(latency.stderr.contains("utap: warning: 37 calls could not be timed"), latency.stderr)
        }
    }

    /// Issue 3 item 5: with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN dropped, `auto` says
    /// why in one line and traces through ptrace, exactly.
    func testAutoFallsBackToPtraceWithoutBPFCapabilities() throws {
        let path = NSTemporaryDirectory() + "utap-fallback-\(getpid()).out"
        defer { unlink(path) }
        let command = [Harness.utap, "trace", "--format", "json", "-o", path, "add2 a=arg0 b=arg1", "add2%return ret",
                       "--", Harness.target("args_pie"), "100"].map { "'\($0)'" }.joined(separator: " ")
        var r = try Harness.run("/usr/sbin/capsh", ["--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c", "exec " + command])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.first, "utap: bpf backend unavailable (utap lacks CAP_BPF and CAP_PERFMON); using ptrace")
        XCTAssertTrue(lines.count > 1 && lines[1].hasSuffix("with ptrace. Ctrl-C to stop."), r.stderr)
        r.output = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(r.events("add2").map { $0.int("a")! }, Array(0..<100))
        XCTAssertEqual(r.events("add2").map { $0.int("b")! }, (0..<100).map { 2 * $0 })
        XCTAssertEqual(r.events("add2%return").map { $0.int("ret")! }, (0..<100).map { 3 * $0 })
        XCTAssertEqual(r.stdout, "sum=14850 strs=309\n")
    }

    /// -p on a running process, stopped by SIGINT while it is busy: the process runs on,
    /// untraced, every byte of its text as the file has it (an out-of-line site and an
    /// emulated one, returns hijacked), and its own output continues unchanged; every call
    /// seen returns, but the last one may still be running at the detach.
    func testDetachFromABusyProcessLeavesItIntact() throws {
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        let forever = Harness.target("forever")
        let utap = try Harness.Background(["trace", "--backend", "ptrace", "--format", "json", "-p", String(target.pid),
                                           "\(forever):tick i=arg0", "\(forever):tick%return", "\(forever):tick+0"])
        target.release()
        usleep(300_000)
        let r = utap.stop(SIGINT)
        XCTAssertEqual(r.status, 0, r.stderr)
        let ticks = r.events("\(forever):tick").compactMap { $0.int("i") }
        XCTAssertGreaterThan(ticks.count, 10)
        XCTAssertEqual(ticks, Array(ticks[0]..<(ticks[0] + Int64(ticks.count))), "every call, in order")
        // The call in flight when utap detaches has its entry and not its return (the
        // hijacked return address is put back first), as with a uretprobe removed.
        let returns = r.events("\(forever):tick%return").count
        XCTAssertTrue(returns == ticks.count || returns == ticks.count - 1, "\(returns) returns of \(ticks.count) calls")
        XCTAssertEqual(r.events("\(forever):tick+0").count, ticks.count)
        let status = try String(contentsOfFile: "/proc/\(target.pid)/status", encoding: .utf8)
        XCTAssertTrue(status.contains("TracerPid:\t0\n"), status)
        XCTAssertEqual(try TextCheck.differences(pid: target.pid, path: forever), [])
        XCTAssertEqual(Glibc.kill(target.pid, 0), 0, "still running")
    }

    /// The CPU wake-latency request in force (a read of /dev/cpu_dma_latency gives it, in
    /// µs), or nil when the machine has no such device.
    private static func cpuWakeLatency() -> Int32? {
        let fd = open("/dev/cpu_dma_latency", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var value: Int32 = -1
        return read(fd, &value, 4) == 4 ? value : nil
    }

    /// Samples the request in force every 2 ms while `utap` runs; then its result.
    private static func sampleWakeLatency(_ utap: Harness.Background) -> ([Int32], Harness.Result) {
        var samples: [Int32] = []
        while utap.process.isRunning {
            if let value = cpuWakeLatency() { samples.append(value) }
            usleep(2000)
        }
        return (samples, utap.wait())
    }

    /// While hits come back to back the tracer asks that idle CPUs wake at once (a 0 µs
    /// CPU latency request); hits 1 ms apart do not take it (but for a rare moment when
    /// the tracer falls behind); utap's end drops it. The request is system-wide: the
    /// test assumes no other utap runs meanwhile.
    func testWakeLatencyIsRequestedOnlyWhileHitsComeBackToBack() throws {
        guard let before = Self.cpuWakeLatency() else {
            let reason = "no /dev/cpu_dma_latency on this machine"
            if Harness.inCI { XCTFail(reason) }
            throw XCTSkip(reason)
        }
        guard before != 0 else { throw XCTSkip("another process holds a 0 µs CPU latency request: nothing to observe") }
        let ticking = try Harness.WaitingTarget("forever", [])
        defer { ticking.kill() }
        ticking.release()
        let sparse = try Harness.Background(["trace", "--backend", "ptrace", "--duration", "0.5", "-o", "/dev/null",
                                             "-p", String(ticking.pid), "tick"])
        let (quiet, sparseResult) = Self.sampleWakeLatency(sparse)
        XCTAssertEqual(sparseResult.status, 0, sparseResult.stderr)
        // A tracer that falls behind (a loaded machine) may find two stops waiting and
        // hold the request until its next poll ends empty: rarely, briefly.
        XCTAssertGreaterThan(quiet.count, 20)
        XCTAssertLessThan(quiet.filter { $0 == 0 }.count * 10, quiet.count, "hits 1 ms apart took the request: \(quiet)")

        let hot = try Harness.Background(["count", "--backend", "ptrace", "probe_me", "--", Harness.target("ptrace/loop"), "100000"])
        let (busy, hotResult) = Self.sampleWakeLatency(hot)
        XCTAssertEqual(hotResult.status, 0, hotResult.stderr)
        XCTAssertTrue(hotResult.stdout.contains("100000"), hotResult.stdout)
        XCTAssertTrue(busy.contains(0), "back-to-back hits did not take the request: \(busy.count) samples")
        XCTAssertEqual(Self.cpuWakeLatency(), before, "utap's end dropped the request")
    }
}

/// Compares a process's r-x mappings of a file with the file's bytes.
enum TextCheck {
    /// Offsets (in the file) where memory differs from the file, in every executable
    /// mapping of `path`.
    static func differences(pid: Int32, path: String) throws -> [UInt64] {
        let file = try Data(contentsOf: URL(fileURLWithPath: path))
        let maps = try String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)
        let mem = open("/proc/\(pid)/mem", O_RDONLY)
        guard mem >= 0 else { throw NSError(domain: "mem", code: Int(errno)) }
        defer { close(mem) }
        let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        var differing: [UInt64] = []
        for line in maps.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count >= 6, parts[1].contains("x"), String(parts[5]) == real else { continue }
            let range = parts[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
            guard range.count == 2, let offset = UInt64(parts[2], radix: 16) else { continue }
            let length = Int(range[1] - range[0])
            var bytes = [UInt8](repeating: 0, count: length)
            let got = pread(mem, &bytes, length, off_t(range[0]))
            guard got > 0 else { continue }
            for i in 0..<got where Int(offset) + i < file.count && bytes[i] != file[Int(offset) + i] {
                differing.append(offset + UInt64(i))
            }
        }
        return differing
    }
}
