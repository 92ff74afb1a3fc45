import Foundation
import Glibc
import UtapCore
@testable import UtapPtrace
import XCTest

/// PtraceEngine: entry probes emulated or stepped out of line (privileged, same skip/fail rule as the rest of the class).
/// An extension of TracedProcessTests to share its target helpers.
extension TracedProcessTests {
    /// args_pie (CET): add2 starts with endbr64, emulated as a 4-byte skip.
    func testEngineCountsArgumentsAtEndbr64() throws {
        try requirePrivileges()
        try runArgsPie(offset: 0, expecting: .skip(length: 4))
    }

    /// args_O0: add2 starts with `push %rbp; mov %rsp,%rbp`: two probes on consecutive
    /// instructions, the first writing the stack.
    func testEngineEmulatesPushAndFramePointerMove() throws {
        try requirePrivileges()
        guard access(Self.targets + "/args_O0", X_OK) == 0 else { return XCTFail("no args_O0: run make targets") }
        let target = try Target.start("args_O0", ["200", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let bias = try loadBias(pid: target.pid, elf: elf)
        let add2 = try XCTUnwrap(elf.functions(named: "add2").first)
        let loop = PtraceEngine(process: try TracedProcess(pid: target.pid))
        for offset: UInt64 in [0, 1] {
            let code = try XCTUnwrap(elf.bytes(atVirtualAddress: add2.address + offset, count: 15))
            try loop.addEntry(at: add2.address + offset &+ bias, code: code)
        }
        XCTAssertEqual(loop.root.sites[add2.address &+ bias]?.emulation.map { "\($0)" }?.hasPrefix("push(UtapCore.Register.rbp"), true)
        var hits: [Hit] = []
        target.go()
        loop.onHit = { hits.append($0) }
        let outcome = try loop.run()
        XCTAssertEqual(outcome, .exited(0))
        XCTAssertEqual(hits.count, 400)
        for i in 0..<200 where hits.count == 400 {
            XCTAssertEqual(hits[2 * i].address, add2.address &+ bias)
            XCTAssertEqual(hits[2 * i + 1].address, add2.address + 1 &+ bias)
            XCTAssertEqual(hits[2 * i].arguments[0...1], [UInt64(i), UInt64(2 * i)])
        }
        XCTAssertEqual(try target.outputAfterReaped(), "sum=59700 strs=309\n")
    }

    /// threads: 4 threads call `work` 2000 times each.
    func testEngineCountsHitsPerThread() throws {
        try requirePrivileges()
        let target = try Target.start("threads", ["2000", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let bias = try loadBias(pid: target.pid, elf: elf)
        let work = try XCTUnwrap(elf.functions(named: "work").first)
        let traced = try TracedProcess(pid: target.pid)
        let workers = traced.threads.subtracting([target.pid])
        let loop = PtraceEngine(process: traced)
        try loop.addEntry(at: work.address &+ bias, code: try XCTUnwrap(elf.bytes(atVirtualAddress: work.address, count: 15)))
        var perThread: [Int32: [Int64]] = [:]
        target.go()
        loop.onHit = { hit in
            perThread[hit.tid, default: []].append(Int64(bitPattern: hit.arguments[1]))
            // Keeps it alive for the text check after detach (delivered as the thread resumes).
            if loop.hitCount == 8000 { Glibc.kill(target.pid, SIGSTOP) }
        }
        let outcome = try loop.run(until: { loop.hitCount == 8000 })
        XCTAssertEqual(outcome, .stopped)
        XCTAssertEqual(loop.hitCount, 8000)
        XCTAssertEqual(Set(perThread.keys), workers)
        for (tid, calls) in perThread {
            XCTAssertEqual(calls, (0..<2000).map { Int64($0) }, "thread \(tid)")
        }
        loop.detach()
        try checkTextAfterDetach(target)
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertEqual(output, "total=8000\n")
    }

    /// Signals the target sends itself while probes are hit are delivered exactly once each.
    func testEngineKeepsTheTargetsSignals() throws {
        try requirePrivileges()
        guard access("/usr/bin/cc", X_OK) == 0 else { return XCTFail("no cc") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("utap-hitloop-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = """
            #include <signal.h>
            #include <stdio.h>
            #include <unistd.h>
            static volatile sig_atomic_t received;
            volatile long sink;
            static void on_usr1(int sig) { (void)sig; received++; }
            __attribute__((noinline)) void probed(long i) { sink = i; }
            int main(void) {
                struct sigaction sa = {0};
                sa.sa_handler = on_usr1;
                sigaction(SIGUSR1, &sa, 0);
                setvbuf(stdout, 0, _IOLBF, 0);
                printf("ready %d\\n", (int)getpid());
                char line[8];
                if (read(0, line, sizeof line) < 0) return 2;
                for (long i = 0; i < 100; i++) {
                    probed(i);
                    kill(getpid(), SIGUSR1);
                }
                printf("count=%d\\n", (int)received);
                return 0;
            }
            """
        try source.write(toFile: dir + "/signals.c", atomically: true, encoding: .utf8)
        // -O0 without CET: `probed` starts with push %rbp, an emulated stack write.
        try compile(["-O0", "-fcf-protection=none", "-o", dir + "/signals", dir + "/signals.c"])
        let target = try Target.start(dir + "/signals", [])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let probed = try XCTUnwrap(elf.functions(named: "probed").first)
        let bias = try loadBias(pid: target.pid, elf: elf)
        let loop = PtraceEngine(process: try TracedProcess(pid: target.pid))
        let code = try XCTUnwrap(elf.bytes(atVirtualAddress: probed.address, count: 15))
        XCTAssertEqual(code[0], 0x55, "push %rbp")
        try loop.addEntry(at: probed.address &+ bias, code: code)
        var arguments: [UInt64] = []
        target.go()
        loop.onHit = { arguments.append($0.arguments[0]) }
        let outcome = try loop.run()
        XCTAssertEqual(outcome, .exited(0))
        XCTAssertEqual(arguments, (0..<100).map { UInt64($0) })
        XCTAssertEqual(try target.outputAfterReaped(), "count=100\n")
    }

    /// args_pie's add2+4 is a rip-relative store: stepped in a stub of the injected page,
    /// its displacement rewritten; every hit exact, the program's result unchanged.
    func testStepsARipRelativeStoreOutOfLine() throws {
        try requirePrivileges()
        let elf = try ELFImage.open(Self.targets + "/args_pie")
        let add2 = try XCTUnwrap(elf.functions(named: "add2").first)
        let code = try XCTUnwrap(elf.bytes(atVirtualAddress: add2.address + 4, count: 15))
        guard case .step = InstructionAnalysis.plan(code, at: add2.address + 4, stub: 0) else {
            return XCTFail("add2+4 of args_pie should need a single step: \(InstructionAnalysis.plan(code, at: add2.address + 4, stub: 0))")
        }
        try runArgsPie(offset: 4, expecting: nil)
    }

    /// A thread parked at an int3 when the tracer detaches is put back on the instruction.
    func testDetachWithAThreadParkedAtAProbe() throws {
        try requirePrivileges()
        let target = try Target.start("args_pie", ["10", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let add2 = try XCTUnwrap(elf.functions(named: "add2").first)
        let traced = try TracedProcess(pid: target.pid)
        let original = try XCTUnwrap(elf.bytes(atVirtualAddress: add2.address, count: 1)).first!
        try traced.insertBreakpoint(at: add2.address &+ (try loadBias(pid: target.pid, elf: elf)), expecting: original)
        target.go()
        // No event loop: the thread executes the int3 and stays in its SIGTRAP stop.
        var state = ""
        for _ in 0..<200 {
            state = (try? String(contentsOfFile: "/proc/\(target.pid)/stat", encoding: .utf8)) ?? ""
            if state.contains(") t ") { break }
            usleep(10_000)
        }
        XCTAssertTrue(state.contains(") t "), state)
        Glibc.kill(target.pid, SIGSTOP)
        traced.detach()
        try checkTextAfterDetach(target)
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertTrue(output.contains("sum=135 strs=309"), output)
    }

    // MARK: helpers

    /// After a detach with a SIGSTOP pending (sent before it): waits for the untraced stop,
    /// compares the text with the file, resumes.
    private func checkTextAfterDetach(_ target: Target) throws {
        var state = ""
        for _ in 0..<500 {
            state = (try? String(contentsOfFile: "/proc/\(target.pid)/stat", encoding: .utf8)) ?? ""
            if state.contains(") T ") { break }
            usleep(2_000)
        }
        XCTAssertTrue(state.contains(") T "), state)
        XCTAssertEqual(try tracerPid(target.pid), 0)
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [])
        Glibc.kill(target.pid, SIGCONT)
    }

    private func runArgsPie(offset: UInt64, expecting emulation: Emulation?) throws {
        let target = try Target.start("args_pie", ["1000", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let bias = try loadBias(pid: target.pid, elf: elf)
        let add2 = try XCTUnwrap(elf.functions(named: "add2").first)
        let address = add2.address + offset &+ bias
        let loop = PtraceEngine(process: try TracedProcess(pid: target.pid))
        try loop.addEntry(at: address, code: try XCTUnwrap(elf.bytes(atVirtualAddress: add2.address + offset, count: 15)))
        XCTAssertEqual(loop.root.sites[address]?.emulation, emulation)
        var hits: [Hit] = []
        target.go()
        loop.onHit = { hit in
            hits.append(hit)
            // Keeps it alive for the text check after detach (delivered as the thread resumes).
            if hits.count == 1000 { Glibc.kill(target.pid, SIGSTOP) }
        }
        let outcome = try loop.run(until: { hits.count == 1000 })
        XCTAssertEqual(outcome, .stopped)
        XCTAssertEqual(hits.count, 1000)
        for (i, hit) in hits.enumerated() {
            XCTAssertEqual(hit.address, address)
            XCTAssertEqual(hit.tid, target.pid)
            XCTAssertEqual(Array(hit.arguments[0...1]), [UInt64(i), UInt64(2 * i)], "call \(i)")
        }
        loop.detach()
        try checkTextAfterDetach(target)
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertEqual(output, "sum=1498500 strs=309\n")
    }

    func compile(_ arguments: [String]) throws {
        var pid: pid_t = 0
        let argv = (["/usr/bin/cc"] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let rc = posix_spawn(&pid, "/usr/bin/cc", nil, nil, argv, environ)
        guard rc == 0 else { throw UtapError.runtime("spawn cc: \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else { throw UtapError.runtime("cc \(arguments.joined(separator: " ")) failed: status \(status)") }
    }
}

extension PtraceEngine {
    /// An entry probe (probe 0) at `address`.
    func addEntry(at address: UInt64, code: [UInt8]) throws {
        try addSite(in: root, at: address, code: code, roles: [.entry(probe: 0)])
    }
}
