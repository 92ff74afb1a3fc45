import Foundation
import Glibc
import XCTest

/// Runs the real utap binary against the C targets built by `make targets`.
/// Privileged: outside CI a test skips with the reason; inside CI (CI=true) it fails.
enum Harness {
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var utap: String {
        ProcessInfo.processInfo.environment["UTAP_BIN"] ?? packageRoot + "/.build/debug/utap"
    }

    static var targets: String {
        ProcessInfo.processInfo.environment["UTAP_TARGETS"] ?? packageRoot + "/.build/targets"
    }

    static func target(_ name: String) -> String { targets + "/" + name }

    static var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// Skips (locally) or fails (CI) unless utap, the targets, root and BPF are all here.
    static func requirePrivileges(file: StaticString = #filePath, line: UInt = #line) throws {
        var problems: [String] = []
        if geteuid() != 0 { problems.append("not root") }
        if access("/sys/bus/event_source/devices/uprobe/type", R_OK) != 0 { problems.append("no uprobe PMU") }
        if access(utap, X_OK) != 0 { problems.append("no utap binary at \(utap) (run make build)") }
        if access(target("args_pie"), X_OK) != 0 { problems.append("no targets in \(targets) (run make targets)") }
        guard !problems.isEmpty else { return }
        let reason = "privileged integration test needs: " + problems.joined(separator: ", ")
        if inCI {
            XCTFail(reason, file: file, line: line)
            throw XCTSkip("failed: " + reason)
        }
        throw XCTSkip(reason)
    }

    /// Skips (locally) or fails (CI) unless the targets `names` were built: they need
    /// compilers (`tools`) beyond the C toolchain.
    static func requireTargets(_ names: [String], builtWith tools: String,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let missing = names.filter { access(target($0), X_OK) != 0 }
        guard !missing.isEmpty else { return }
        let reason = "no \(missing.joined(separator: ", ")) in \(targets) (run make targets; it needs \(tools))"
        if inCI {
            XCTFail(reason, file: file, line: line)
            throw XCTSkip("failed: " + reason)
        }
        throw XCTSkip(reason)
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        /// What utap wrote to its -o file, when the test gave one.
        var output: String?

        /// The trace: the -o file if any, else stdout.
        var trace: String { output ?? stdout }

        /// The trace as JSON Lines.
        var records: [[String: Any]] {
            trace.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        var events: [[String: Any]] { records.filter { $0["type"] as? String == "event" } }

        var summary: [String: Any]? { records.first { $0["type"] as? String == "summary" } }

        func events(_ probe: String) -> [[String: Any]] {
            events.filter { $0["probe"] as? String == probe }
        }
    }

    /// `source` (C) built with cc and `flags` in a directory removed when `test` ends: a
    /// program made for one test. Returns its path.
    static func compile(_ source: String, named name: String, flags: [String] = ["-O2"],
                        for test: XCTestCase, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let dir = NSTemporaryDirectory() + "utap-\(name)-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        try source.write(toFile: dir + "/\(name).c", atomically: true, encoding: .utf8)
        let cc = try run("/usr/bin/cc", flags + ["-o", dir + "/" + name, dir + "/\(name).c"])
        XCTAssertEqual(cc.status, 0, cc.stderr, file: file, line: line)
        return dir + "/" + name
    }

    /// Runs a program to completion, feeding `input` on stdin, killing it after `timeout`.
    static func run(_ executable: String, _ arguments: [String], input: String = "",
                    environment: [String: String] = [:], timeout: TimeInterval = 60) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe(), inp = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = inp
        try process.run()
        inp.fileHandleForWriting.write(Data(input.utf8))
        try? inp.fileHandleForWriting.close()
        let collected = Collector(out: out, err: err)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(2000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            XCTFail("\(executable) \(arguments) timed out after \(timeout) s")
        }
        process.waitUntilExit()
        let (stdout, stderr) = collected.finish()
        return Result(status: process.terminationStatus, stdout: stdout, stderr: stderr, output: nil)
    }

    static func utap(_ arguments: [String], input: String = "", environment: [String: String] = [:],
                     timeout: TimeInterval = 60) throws -> Result {
        let result = try run(utap, withBackend(arguments), input: input, environment: environment, timeout: timeout)
        checkBackend(result.stderr)
        return result
    }

    /// Under `eachBackend`, the status line must name the backend asked for.
    static func checkBackend(_ stderr: String, file: StaticString = #filePath, line: UInt = #line) {
        if let backend, stderr.contains("Ctrl-C to stop."), !stderr.contains("with \(backend). Ctrl-C to stop.") {
            XCTFail("expected the \(backend) backend: \(stderr)", file: file, line: line)
        }
    }

    /// utap's arguments with `--backend` added while `eachBackend` runs.
    static func withBackend(_ arguments: [String]) -> [String] {
        guard let backend, let first = arguments.first, ["trace", "count", "latency"].contains(first),
              !arguments.contains("--backend") else { return arguments }
        return [first, "--backend", backend] + arguments.dropFirst()
    }

    /// UTAP_SANITIZER (`make test-asan`, `make test-tsan`): the sanitizer utap is built with.
    static let sanitizer = ProcessInfo.processInfo.environment["UTAP_SANITIZER"]

    /// UTAP_STRESS=1 (`make stress`): the full sizes of the load tests.
    static let stress = ProcessInfo.processInfo.environment["UTAP_STRESS"] == "1"

    /// The backend `utap(_:)` asks for (`--backend`), while `eachBackend` runs.
    nonisolated(unsafe) static var backend: String?

    /// Runs `body` once with each backend: the same test, the same exact expectations.
    static func eachBackend(_ body: (String) throws -> Void) rethrows {
        for name in ["bpf", "ptrace"] {
            backend = name
            defer { backend = nil }
            try body(name)
        }
    }

    /// Reads both pipes on background threads so neither can fill up and block the child.
    final class Collector {
        private var outData = Data(), errData = Data()
        private let group = DispatchGroup()

        init(out: Pipe, err: Pipe) {
            read(out) { self.outData = $0 }
            read(err) { self.errData = $0 }
        }

        private func read(_ pipe: Pipe, into store: @escaping (Data) -> Void) {
            group.enter()
            DispatchQueue.global().async {
                store(pipe.fileHandleForReading.readDataToEndOfFile())
                self.group.leave()
            }
        }

        func finish() -> (String, String) {
            group.wait()
            return (String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
        }
    }

    /// A target started with `--wait`: it has printed `ready <pid>` and waits for a line
    /// on stdin before making its calls.
    final class WaitingTarget {
        let process = Process()
        let pid: Int32
        private let input = Pipe()
        private let collector: Collector

        /// `name` from the targets folder, with `--wait` added.
        convenience init(_ name: String, _ arguments: [String]) throws {
            try self.init(executable: Harness.target(name), arguments: arguments + ["--wait"])
        }

        /// Any command that ends up running a target with `--wait` (e.g. through unshare).
        init(executable: String, arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            process.standardInput = input
            try process.run()
            // Read the ready line byte by byte so the rest stays for the collector.
            var line = Data()
            let handle = out.fileHandleForReading
            while !line.contains(UInt8(ascii: "\n")) {
                let byte = handle.readData(ofLength: 1)
                if byte.isEmpty { break }
                line.append(byte)
            }
            let text = String(decoding: line, as: UTF8.self)
            guard text.hasPrefix("ready "), let pid = Int32(text.dropFirst(6).trimmingCharacters(in: .whitespacesAndNewlines)) else {
                try? input.fileHandleForWriting.close()
                process.waitUntilExit()
                let problem = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                XCTFail("\(executable) did not say ready: '\(text)' \(problem)")
                throw XCTSkip("no target")
            }
            self.pid = pid
            collector = Collector(out: out, err: err)
        }

        /// Lets the target make its calls.
        func release() {
            input.fileHandleForWriting.write(Data("go\n".utf8))
            try? input.fileHandleForWriting.close()
        }

        /// Lets the target make its calls and waits for it to exit.
        func go() -> Result {
            release()
            return finish()
        }

        /// Waits for a released target to exit.
        func finish() -> Result {
            process.waitUntilExit()
            let (stdout, stderr) = collector.finish()
            return Result(status: process.terminationStatus, stdout: stdout, stderr: stderr, output: nil)
        }

        func kill(_ signo: Int32 = SIGKILL) {
            guard process.isRunning else { return }
            Glibc.kill(pid, signo)
            process.waitUntilExit()
        }
    }

    /// utap running in the background; `stop()` interrupts it and collects its output.
    final class Background {
        let process = Process()
        private let collector: Collector
        private let errPipe = Pipe()

        init(_ arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: Harness.utap)
            process.arguments = Harness.withBackend(arguments)
            let out = Pipe()
            process.standardOutput = out
            process.standardError = errPipe
            process.standardInput = FileHandle.nullDevice
            try process.run()
            // The status line says the probes are attached.
            var seen = Data()
            let handle = errPipe.fileHandleForReading
            while !String(decoding: seen, as: UTF8.self).contains("Ctrl-C to stop.") {
                let byte = handle.readData(ofLength: 1)
                if byte.isEmpty { break }
                seen.append(byte)
            }
            collector = Collector(out: out, err: errPipe)
            prefix = String(decoding: seen, as: UTF8.self)
            Harness.checkBackend(prefix)
        }

        private let prefix: String

        func stop(_ signo: Int32 = SIGINT, timeout: TimeInterval = 30) -> Result {
            if process.isRunning { Glibc.kill(process.processIdentifier, signo) }
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(2000) }
            if process.isRunning {
                process.terminate()
                XCTFail("utap did not stop after signal \(signo)")
            }
            process.waitUntilExit()
            let (stdout, stderr) = collector.finish()
            return Result(status: process.terminationStatus, stdout: stdout, stderr: prefix + stderr, output: nil)
        }

        /// Waits for utap to exit by itself.
        func wait(timeout: TimeInterval = 30) -> Result {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(2000) }
            return stop(SIGKILL)
        }
    }
}

extension Dictionary where Key == String, Value == Any {
    func field(_ name: String) -> Any? { (self["fields"] as? [String: Any])?[name] }
    func int(_ name: String) -> Int64? { (field(name) as? NSNumber)?.int64Value }
    func uint(_ name: String) -> UInt64? { (field(name) as? NSNumber)?.uint64Value }
}
