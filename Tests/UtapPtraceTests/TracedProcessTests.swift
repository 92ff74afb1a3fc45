import Foundation
import Glibc
import UtapCore
import UtapPtrace
import XCTest

/// Privileged: outside CI a test skips with the reason; inside CI (CI=true) it fails.
final class TracedProcessTests: XCTestCase {
    // MARK: the tests

    func testSeizesEveryThreadAndRestoresTextExactly() throws {
        try requirePrivileges()
        let target = try Target.start("threads", ["10", "--wait"])
        defer { target.kill() }

        let traced = try TracedProcess(pid: target.pid)
        XCTAssertEqual(traced.threads.count, 5)
        XCTAssertEqual(traced.threads, try taskIDs(target.pid))

        let elf = try ELFImage.open(target.path)
        let work = try XCTUnwrap(elf.functions(named: "work").first)
        let bias = try loadBias(pid: target.pid, elf: elf)
        let address = work.address &+ bias
        let original = try XCTUnwrap(elf.bytes(atVirtualAddress: work.address, count: 1)).first!

        XCTAssertEqual(try traced.read(address, count: 1), [original])
        try traced.insertBreakpoint(at: address, expecting: original)
        XCTAssertEqual(try traced.read(address, count: 1), [0xCC])
        XCTAssertEqual(traced.breakpoints, [address: original])
        // Exactly one byte of the r-x mapping differs from the file while the int3 is in.
        let differences = try textDifferences(pid: target.pid, path: target.path)
        XCTAssertEqual(differences, [address])

        try traced.removeBreakpoint(at: address)
        XCTAssertEqual(try traced.read(address, count: 1), [original])
        traced.detach()
        traced.detach()  // idempotent
        XCTAssertFalse(traced.isAttached)
        XCTAssertEqual(try tracerPid(target.pid), 0)
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [])

        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertTrue(output.contains("total=40"), output)
    }

    /// The PTRACE_PEEKTEXT/POKETEXT fallback: each access interrupts a thread blocked in
    /// read(2) or a barrier, which must resume unharmed.
    func testPtraceOnlyMemoryAccess() throws {
        try requirePrivileges()
        let target = try Target.start("threads", ["10", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let work = try XCTUnwrap(elf.functions(named: "work").first)
        let address = work.address &+ (try loadBias(pid: target.pid, elf: elf))
        let expected = try XCTUnwrap(elf.bytes(atVirtualAddress: work.address, count: 37))
        let traced = try TracedProcess(pid: target.pid, memoryAccess: .ptraceOnly)
        XCTAssertEqual(traced.threads, try taskIDs(target.pid))
        XCTAssertEqual(try traced.read(address, count: 37), expected)  // unaligned, several words
        try traced.insertBreakpoint(at: address, expecting: expected[0])
        XCTAssertEqual(try traced.read(address, count: 2), [0xCC, expected[1]])
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [address])
        try traced.removeBreakpoint(at: address)
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [])
        try traced.insertBreakpoint(at: address, expecting: expected[0])
        traced.detach()  // restores it
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [])
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertTrue(output.contains("total=40"), output)
    }

    func testDetachRestoresBreakpointsStillInPlace() throws {
        try requirePrivileges()
        let target = try Target.start("args_pie", ["10", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let bias = try loadBias(pid: target.pid, elf: elf)
        XCTAssertNotEqual(bias, 0, "args_pie is a PIE")
        do {
            let traced = try TracedProcess(pid: target.pid)
            for name in ["add2", "take_str", "is_even"] {
                let symbol = try XCTUnwrap(elf.functions(named: name).first)
                let original = try XCTUnwrap(elf.bytes(atVirtualAddress: symbol.address, count: 1)).first!
                try traced.insertBreakpoint(at: symbol.address &+ bias, expecting: original)
            }
            XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path).count, 3)
            // No explicit detach: deinit restores the bytes and detaches.
        }
        XCTAssertEqual(try tracerPid(target.pid), 0)
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [])
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertTrue(output.contains("sum=135 strs=309"), output)
    }

    func testSecondSeizeIsRefusedNamingTheTracer() throws {
        try requirePrivileges()
        let target = try Target.start("args_pie", ["10", "--wait"])
        defer { target.kill() }
        let first = try TracedProcess(pid: target.pid)
        XCTAssertThrowsError(try TracedProcess(pid: target.pid)) { error in
            let message = (error as? UtapError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("already traced by pid \(getpid())"), message)
        }
        // The refused attempt changed nothing.
        XCTAssertTrue(first.isAttached)
        XCTAssertEqual(first.threads, try taskIDs(target.pid))
        first.detach()
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertTrue(output.contains("sum=135 strs=309"), output)
    }

    func testMismatchingExpectedByteIsRefusedAndNothingWritten() throws {
        try requirePrivileges()
        let target = try Target.start("args_pie", ["10", "--wait"])
        defer { target.kill() }
        let elf = try ELFImage.open(target.path)
        let add2 = try XCTUnwrap(elf.functions(named: "add2").first)
        let address = add2.address &+ (try loadBias(pid: target.pid, elf: elf))
        let original = try XCTUnwrap(elf.bytes(atVirtualAddress: add2.address, count: 1)).first!
        let traced = try TracedProcess(pid: target.pid)

        XCTAssertThrowsError(try traced.insertBreakpoint(at: address, expecting: original ^ 0xFF)) { error in
            let message = (error as? UtapError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("differs") || message.contains("memory holds"), message)
        }
        XCTAssertEqual(try traced.read(address, count: 1), [original])
        XCTAssertEqual(traced.breakpoints, [:])

        // A second breakpoint at the same address is refused.
        try traced.insertBreakpoint(at: address, expecting: original)
        XCTAssertThrowsError(try traced.insertBreakpoint(at: address, expecting: original)) { error in
            let message = (error as? UtapError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("already there"), message)
        }
        try traced.removeBreakpoint(at: address)

        // An int3 this object did not write (a stale one from a killed tracer) is refused.
        try pokeByte(pid: target.pid, address, 0xCC)
        XCTAssertThrowsError(try traced.insertBreakpoint(at: address, expecting: original)) { error in
            let message = (error as? UtapError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("already holds int3"), message)
        }
        XCTAssertEqual(traced.breakpoints, [:])
        try pokeByte(pid: target.pid, address, original)
        traced.detach()
        XCTAssertEqual(try textDifferences(pid: target.pid, path: target.path), [])
        let (status, output) = try target.release()
        XCTAssertEqual(status, 0)
        XCTAssertTrue(output.contains("sum=135 strs=309"), output)
    }

    // MARK: helpers

    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var targets: String {
        ProcessInfo.processInfo.environment["UTAP_TARGETS"] ?? packageRoot + "/.build/targets"
    }

    func requirePrivileges(file: StaticString = #filePath, line: UInt = #line) throws {
        var problems: [String] = []
        if geteuid() != 0 { problems.append("not root") }
        for name in ["threads", "args_pie"] where access(Self.targets + "/" + name, X_OK) != 0 {
            problems.append("no \(name) in \(Self.targets) (run make targets)")
        }
        guard !problems.isEmpty else { return }
        let reason = "privileged ptrace test needs: " + problems.joined(separator: ", ")
        if ProcessInfo.processInfo.environment["CI"] == "true" {
            XCTFail(reason, file: file, line: line)
            throw XCTSkip("failed: " + reason)
        }
        throw XCTSkip(reason)
    }

    /// A C target started with posix_spawn (not Foundation's Process, whose waitpid could
    /// consume ptrace-stops), stopped at its `--wait` handshake.
    final class Target {
        let pid: Int32
        let path: String
        private let stdinFD: Int32
        private let stdoutFD: Int32
        private var reaped = false
        private var released = false
        private var output = ""

        private init(pid: Int32, path: String, stdinFD: Int32, stdoutFD: Int32) {
            self.pid = pid
            self.path = path
            self.stdinFD = stdinFD
            self.stdoutFD = stdoutFD
        }

        static func start(_ name: String, _ arguments: [String]) throws -> Target {
            let path = URL(fileURLWithPath: name.hasPrefix("/") ? name : TracedProcessTests.targets + "/" + name)
                .resolvingSymlinksInPath().path
            var input: [Int32] = [0, 0], output: [Int32] = [0, 0]
            guard pipe(&input) == 0, pipe(&output) == 0 else {
                throw UtapError.runtime("pipe: \(String(cString: strerror(errno)))")
            }
            for fd in input + output { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, input[0], 0)
            posix_spawn_file_actions_adddup2(&actions, output[1], 1)
            let argv = ([path] + arguments).map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var pid: pid_t = 0
            let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
            close(input[0])
            close(output[1])
            guard rc == 0 else { throw UtapError.runtime("spawn \(path): \(String(cString: strerror(rc)))") }
            let target = Target(pid: pid, path: path, stdinFD: input[1], stdoutFD: output[0])
            let ready = try target.readLine(timeout: 10)
            guard ready == "ready \(pid)" else {
                target.kill()
                throw UtapError.runtime("\(name): expected 'ready \(pid)', got '\(ready)'")
            }
            return target
        }

        func readLine(timeout: Double) throws -> String {
            var line: [UInt8] = []
            let deadline = Date().addingTimeInterval(timeout)
            while true {
                var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
                let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
                guard poll(&pfd, 1, left) > 0 else { throw UtapError.runtime("timed out reading the target") }
                var byte: UInt8 = 0
                let got = Glibc.read(stdoutFD, &byte, 1)
                if got <= 0 || byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
                line.append(byte)
            }
        }

        /// Lets the target make its calls (answers its `--wait` handshake), returning at once.
        func go() {
            guard !released else { return }
            released = true
            var newline = UInt8(ascii: "\n")
            _ = write(stdinFD, &newline, 1)
            close(stdinFD)
        }

        /// The rest of its stdout, for a target whose exit status someone else reaped (a
        /// tracer's `waitpid(-1)`).
        func outputAfterReaped(timeout: Double = 20) throws -> String {
            go()
            reaped = true
            defer { close(stdoutFD) }
            return try readToEnd(timeout: timeout)
        }

        private func readToEnd(timeout: Double) throws -> String {
            var data: [UInt8] = []
            let deadline = Date().addingTimeInterval(timeout)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
                let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
                guard poll(&pfd, 1, left) > 0 else { throw UtapError.runtime("target did not finish in \(timeout) s") }
                let got = buffer.withUnsafeMutableBytes { Glibc.read(stdoutFD, $0.baseAddress!, $0.count) }
                if got <= 0 { break }
                data += buffer[0..<got]
            }
            return String(decoding: data, as: UTF8.self)
        }

        /// Lets the target make its calls; returns its exit status and the rest of its stdout.
        func release(timeout: Double = 20) throws -> (Int32, String) {
            go()
            var data: [UInt8] = []
            let deadline = Date().addingTimeInterval(timeout)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
                let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
                guard poll(&pfd, 1, left) > 0 else { throw UtapError.runtime("target did not finish in \(timeout) s") }
                let got = buffer.withUnsafeMutableBytes { Glibc.read(stdoutFD, $0.baseAddress!, $0.count) }
                if got <= 0 { break }
                data += buffer[0..<got]
            }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            reaped = true
            close(stdoutFD)
            let exit: Int32 = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
            return (exit, String(decoding: data, as: UTF8.self))
        }

        func kill() {
            guard !reaped else { return }
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            reaped = true
            if !released { close(stdinFD) }
            close(stdoutFD)
        }
    }

    /// Writes one byte through /proc/PID/mem from the test itself (root, no ptrace needed).
    func pokeByte(pid: Int32, _ address: UInt64, _ value: UInt8) throws {
        let mem = open("/proc/\(pid)/mem", O_RDWR | O_CLOEXEC)
        guard mem >= 0 else { throw UtapError.runtime("open /proc/\(pid)/mem: \(String(cString: strerror(errno)))") }
        defer { close(mem) }
        var byte = value
        XCTAssertEqual(pwrite(mem, &byte, 1, off_t(address)), 1)
    }

    func taskIDs(_ pid: Int32) throws -> Set<Int32> {
        Set(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").compactMap { Int32($0) })
    }

    func tracerPid(_ pid: Int32) throws -> Int32? {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = status.split(separator: "\n").first { $0.hasPrefix("TracerPid:") }
        return line.flatMap { Int32($0.dropFirst("TracerPid:".count).trimmingCharacters(in: .whitespaces)) }
    }

    func mappings(pid: Int32, path: String) throws -> [MapEntry] {
        try ProcMaps.read(pid: pid).filter { $0.path == path }
    }

    /// Runtime address minus ELF virtual address: the start of the binary's mapping at file
    /// offset 0, minus the page-aligned address of the segment at file offset 0.
    func loadBias(pid: Int32, elf: ELFImage) throws -> UInt64 {
        let first = try XCTUnwrap(try mappings(pid: pid, path: elf.path).first { $0.offset == 0 },
                                  "no mapping of \(elf.path) at offset 0")
        let segment = try XCTUnwrap(elf.segments.first { $0.fileOffset == 0 })
        return first.start &- (segment.virtualAddress & ~0xFFF)
    }

    /// Runtime addresses where the binary's r-x mappings, read through /proc/PID/mem by this
    /// test (not by the tracer), differ from the file at the same offsets.
    func textDifferences(pid: Int32, path: String) throws -> [UInt64] {
        let text = try mappings(pid: pid, path: path).filter { $0.isExecutable }
        XCTAssertFalse(text.isEmpty, "no r-x mapping of \(path)")
        let file = try XCTUnwrap(FileManager.default.contents(atPath: path))
        let mem = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
        guard mem >= 0 else { throw UtapError.runtime("open /proc/\(pid)/mem: \(String(cString: strerror(errno)))") }
        defer { close(mem) }
        var differences: [UInt64] = []
        for map in text {
            let count = Int(min(map.end - map.start, UInt64(file.count) - map.offset))
            var memory = [UInt8](repeating: 0, count: count)
            let got = memory.withUnsafeMutableBytes { pread(mem, $0.baseAddress!, count, off_t(map.start)) }
            XCTAssertEqual(got, count, "short read of \(map)")
            let expected = file[Int(map.offset)..<Int(map.offset) + count]
            for (i, (a, b)) in zip(memory, expected).enumerated() where a != b {
                differences.append(map.start + UInt64(i))
            }
        }
        return differences
    }
}
