import Foundation
import Glibc
import UtapCore
import XCTest

/// Bad input: each case fails with the contract's exit status (2 usage, 1 runtime), one
/// `utap: error: WHAT: WHY` line and at most one `utap: hint:` line on stderr, names what
/// is wrong, prints nothing on stdout, never runs the COMMAND and leaves no BPF link behind.
final class ErrorTests: XCTestCase {
    private var fixtures: Fixtures!

    override func setUp() async throws {
        try Harness.requirePrivileges()
        guard UtapLinks.bpftool != nil else {
            let reason = "ErrorTests count utap's BPF links with bpftool, which is not installed"
            if Harness.inCI { XCTFail(reason) }
            throw XCTSkip(reason)
        }
        fixtures = try Fixtures()
    }

    override func tearDown() {
        fixtures = nil
    }

    private var argsPie: String { Harness.target("args_pie") }

    // MARK: The one helper every case goes through

    /// Runs `utap ARGS` (or `LAUNCHER... ARGS`, where the launcher ends with utap's path)
    /// and checks the whole failure contract; reports every broken rule in one failure.
    /// `mentions` must appear in the error line, `hint` (when given) in the hint line.
    private func assertFails(_ args: [String], status: Int32, mentions: [String], hint: String? = nil,
                             launcher: [String] = [], file: StaticString = #filePath, line: UInt = #line) {
        let shown = "utap " + args.map { $0.contains(" ") || $0.isEmpty ? "'\($0)'" : $0 }.joined(separator: " ")
        do {
            let before = try UtapLinks.current()
            let r = launcher.isEmpty
                ? try Harness.utap(args, timeout: 10)
                : try Harness.run(launcher[0], Array(launcher.dropFirst()) + args, timeout: 10)
            var problems: [String] = []
            func expect(_ ok: Bool, _ rule: String) { if !ok { problems.append(rule) } }

            expect(r.status == status, "exit status \(r.status), expected \(status)")
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
            expect(r.stderr.hasSuffix("\n") && (1...2).contains(lines.count),
                   "stderr must be one error line and at most one hint line (no backtrace, no status line)")
            let error = lines.first ?? ""
            expect(error.hasPrefix("utap: error: "), "the first line must start with 'utap: error: '")
            let text = error.dropFirst("utap: error: ".count)
            let colon = text.range(of: ": ")
            expect(colon.map { $0.lowerBound > text.startIndex && $0.upperBound < text.endIndex } ?? false,
                   "the error must read 'WHAT: WHY'")
            if lines.count == 2 { expect(lines[1].hasPrefix("utap: hint: "), "the second line must be a hint") }
            expect(!r.stderr.contains("Ctrl-C to stop"), "nothing was attached, so no status line")
            for mention in mentions where !error.contains(mention) {
                problems.append("the error must name '\(mention)'")
            }
            if let hint { expect(lines.count == 2 && lines[1].contains(hint), "the hint must say '\(hint)'") }
            // utap wrote no events, and the COMMAND (args_pie prints sum=...) never ran.
            expect(r.stdout.isEmpty, "stdout must be empty: no events, the command never ran")
            let left = try UtapLinks.left(since: before)
            expect(left.isEmpty, "utap BPF links left attached: \(left.sorted())")

            if !problems.isEmpty {
                XCTFail("\(shown)\n  - " + problems.joined(separator: "\n  - ")
                        + "\n--- exit \(r.status), stderr:\n\(r.stderr)--- stdout:\n\(r.stdout)---", file: file, line: line)
            }
        } catch {
            XCTFail("\(shown): \(error)", file: file, line: line)
        }
    }

    // MARK: Files

    func testMissingFile() {
        assertFails(["trace", "/nonexistent/app:main"], status: 2, mentions: ["/nonexistent/app"])
    }

    func testDirectory() {
        assertFails(["trace", "/tmp:main"], status: 2, mentions: ["/tmp", "directory"])
    }

    func testNotAnELFFile() {
        assertFails(["trace", fixtures.text + ":main"], status: 2, mentions: [fixtures.text, "not an ELF"])
    }

    func testELFOfAnotherArchitecture() {
        assertFails(["trace", fixtures.aarch64 + ":add2"], status: 2, mentions: [fixtures.aarch64, "AArch64"])
        // As a COMMAND: its library probes would sit in the 64-bit libc it never maps.
        assertFails(["count", "libc:malloc", "--", fixtures.x86], status: 2, mentions: [fixtures.x86, "32-bit ELF for x86"],
                    hint: "64-bit x86-64 programs")
    }

    // MARK: Symbols, offsets, addresses

    func testUnknownSymbolSuggestsTheNearName() throws {
        assertFails(["trace", "add3", "--", argsPie], status: 2, mentions: ["add3", argsPie], hint: "add2")
        assertFails(["trace", argsPie + ":add3"], status: 2, mentions: ["add3"], hint: "add2")
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        assertFails(["trace", "-p", String(target.pid), "tock"], status: 2, mentions: ["tock"], hint: "tick")
    }

    func testOffsetInsideAnInstruction() {
        // add2 starts with endbr64 (4 bytes): +1 is inside it; the hint names the boundaries.
        assertFails(["trace", "add2+1", "--", argsPie], status: 2, mentions: ["add2+1"], hint: "+4")
        assertFails(["trace", argsPie + ":add2+1"], status: 2, mentions: ["add2+1"], hint: "+4")
    }

    func testAddressOutsideEverySegment() {
        assertFails(["trace", "0xffffffff", "--", argsPie], status: 2, mentions: ["0xffffffff", argsPie])
        assertFails(["trace", argsPie + ":0xffffffff"], status: 2, mentions: ["0xffffffff"])
        // args_pie's .rodata (0x2000): mapped, but data.
        assertFails(["trace", "0x2000", "--", argsPie], status: 2, mentions: ["0x2000", "data segment"], hint: "utap list -v")
    }

    // MARK: Probe grammar

    func testUnknownType() {
        assertFails(["trace", "add2 a=arg0:s128", "--", argsPie], status: 2, mentions: ["s128"], hint: "s64")
    }

    func testMalformedProbes() {
        let cases: [(probe: String, mentions: [String])] = [
            (":add2", [":add2", "empty target"]),
            ("add2 a=arg9", ["arg9"]),
            ("add2 =arg0", ["=arg0"]),
            ("add2%retrun", ["%retrun"]),
            ("add2+zz", ["add2+zz"]),
            ("", ["empty probe"]),
        ]
        for c in cases {
            assertFails(["trace", c.probe, "--", argsPie], status: 2, mentions: c.mentions)
        }
    }

    func testRetOnAnEntryProbe() {
        assertFails(["trace", "add2 ret", "--", argsPie], status: 2, mentions: ["'ret'"], hint: "%return")
    }

    func testArgumentOnAReturnProbe() {
        assertFails(["trace", "add2%return arg0", "--", argsPie], status: 2, mentions: ["arg0", "return probe"])
    }

    func testStringLengthOutOfRange() {
        for length in ["0", "256"] {
            assertFails(["trace", "take_str s=arg0:str[\(length)]", "--", argsPie], status: 2,
                        mentions: ["'\(length)'", "1..255"])
        }
    }

    // MARK: Libraries

    func testUnknownLibrary() throws {
        assertFails(["trace", "libnosuchlib:foo"], status: 2, mentions: ["libnosuchlib"])
        assertFails(["trace", "libnosuchlib:foo", "--", argsPie], status: 2, mentions: ["libnosuchlib"])
        // The same mistake with -p: resolved in the process's own mappings, same class of error.
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        assertFails(["trace", "-p", String(target.pid), "libnosuchlib:foo"], status: 2,
                    mentions: ["libnosuchlib", String(target.pid)])
    }

    // MARK: Processes and commands

    func testUnknownPid() {
        // Checked free first, so a failure here cannot be blamed on a real process 999999.
        XCTAssertTrue(kill(999_999, 0) != 0 && errno == ESRCH, "pid 999999 exists on this machine")
        assertFails(["trace", "-p", "999999", "tick"], status: 2, mentions: ["999999"])
        assertFails(["trace", "-p", "999999", argsPie + ":add2"], status: 2, mentions: ["999999"])
        // kthreadd (pid 2) is a kernel thread: bpf waited on it for nothing, ptrace blamed privileges.
        for backend in ["bpf", "ptrace"] {
            assertFails(["trace", "--backend", backend, "-p", "2", "libc:malloc"], status: 2, mentions: ["pid 2", "kernel thread"])
        }
    }

    /// A zombie (exited, not reaped) is named as such, on both backends, not reported as
    /// a process without libraries or an executable.
    func testZombiePid() throws {
        // sh runs `sleep 0` in the background and then becomes `sleep 5`, which never
        // reaps it.
        let parent = Process()
        parent.executableURL = URL(fileURLWithPath: "/bin/sh")
        parent.arguments = ["-c", "sleep 0 & exec sleep 5"]
        try parent.run()
        defer { parent.terminate(); parent.waitUntilExit() }
        var zombie: Int32 = 0
        for _ in 0..<500 where zombie == 0 {
            usleep(10_000)
            let children = (try? String(contentsOfFile: "/proc/\(parent.processIdentifier)/task/\(parent.processIdentifier)/children",
                                        encoding: .utf8)) ?? ""
            if let child = Int32(children.split(separator: " ").first ?? ""), ProcessState.hasExited(child) { zombie = child }
        }
        XCTAssertNotEqual(zombie, 0, "no zombie child appeared")
        for backend in ["auto", "ptrace"] {
            assertFails(["trace", "--backend", backend, "-p", String(zombie), "libc:malloc"], status: 2, mentions: ["\(zombie)", "zombie"])
            assertFails(["trace", "--backend", backend, "-p", String(zombie), "malloc"], status: 2, mentions: ["\(zombie)", "zombie"])
        }
    }

    /// Not an error: the traced process going away ends the trace by itself, with status 0.
    func testPidThatExitsEndsTheTrace() throws {
        let target = try Harness.WaitingTarget("forever", [])
        let before = try UtapLinks.current()
        let utap: Harness.Background
        do {
            utap = try Harness.Background(["trace", "-p", String(target.pid), "tick"])
        } catch {
            target.kill()
            throw error
        }
        target.release()
        usleep(200_000)
        XCTAssertFalse(try UtapLinks.current().subtracting(before).isEmpty,
                       "bpftool shows utap's links while it traces (every other case relies on it)")
        target.kill()
        let r = utap.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, "utap exits by itself, with status 0, when its pid exits\n\(r.stderr)")
        XCTAssertTrue(r.stderr.contains("pid \(target.pid) exited"), r.stderr)
        XCTAssertTrue(r.stderr.contains(" events, 0 lost"), "the summary is printed\n\(r.stderr)")
        XCTAssertFalse(r.stderr.contains("utap: error:"), r.stderr)
        XCTAssertGreaterThan(r.stdout.split(separator: "\n").filter { $0.contains("tick") }.count, 0)
        XCTAssertEqual(try UtapLinks.left(since: before), [], "no link left attached")
    }

    func testCommandNotFound() {
        assertFails(["trace", argsPie + ":add2", "--", "/nonexistent/cmd"], status: 2, mentions: ["/nonexistent/cmd"])
        assertFails(["trace", argsPie + ":add2", "--", "nosuchcommand-xyz"], status: 2,
                    mentions: ["nosuchcommand-xyz", "PATH"])
        assertFails(["trace", "add2", "--", "nosuchcommand-xyz"], status: 2, mentions: ["nosuchcommand-xyz"])
    }

    func testNothingAfterTheDashes() {
        // '--' promises a COMMAND: an empty one must not silently become "trace everything".
        assertFails(["trace", argsPie + ":add2", "--"], status: 2, mentions: ["--"])
    }

    func testNotRoot() throws {
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        let utap = try fixtures.executableByNobody(Harness.utap, as: nobody)
        let canRun = try Harness.run(nobody[0], Array(nobody.dropFirst()) + ["/usr/bin/test", "-x", argsPie])
        XCTAssertEqual(canRun.status, 0, "user nobody can execute \(argsPie)")
        let target = try Harness.WaitingTarget("forever", [])
        defer { target.kill() }
        // Every process: only BPF can do that.
        assertFails(["trace", argsPie + ":add2"], status: 1, mentions: ["CAP_BPF"], hint: "as root", launcher: nobody + [utap])
        assertFails(["trace", "--backend", "bpf", "add2", "--", argsPie], status: 1, mentions: ["CAP_BPF"], hint: "as root",
                    launcher: nobody + [utap])
        // Root's process: not this user's to trace.
        assertFails(["trace", "-p", String(target.pid), "tick"], status: 1, mentions: ["pid \(target.pid)", "permitted"],
                    hint: "as root", launcher: nobody + [utap])
        // Its own command: traced through ptrace, as gdb or ltrace would, saying why.
        let own = try Harness.run(nobody[0], Array(nobody.dropFirst()) + [utap, "trace", "add2", "--", argsPie, "3"], timeout: 20)
        XCTAssertEqual(own.status, 0, own.stderr)
        XCTAssertTrue(own.stderr.hasPrefix("utap: bpf backend unavailable (utap lacks CAP_BPF and CAP_PERFMON); using ptrace\n"), own.stderr)
        XCTAssertEqual(own.stdout.split(separator: "\n").filter { $0.contains("add2") }.count, 3, own.stdout)
    }

    // MARK: Command line

    func testPidAndCommandTogether() {
        assertFails(["trace", "-p", "1", argsPie + ":add2", "--", argsPie], status: 2, mentions: ["-p", "COMMAND"])
    }

    func testNoProbe() {
        assertFails(["trace"], status: 2, mentions: ["PROBE"])
        assertFails(["trace", "--", argsPie], status: 2, mentions: ["PROBE"])
    }

    func testBadOptionValues() {
        let probe = [argsPie + ":add2", "--", argsPie]
        let cases: [(args: [String], mentions: [String])] = [
            (["--duration", "0"], ["--duration"]),
            (["--max-events", "0"], ["--max-events"]),
            (["--format", "xml"], ["--format", "xml"]),
            (["--backend", "foo"], ["--backend", "foo"]),
            // A negative number is the option's value, not another option.
            (["--duration", "-1"], ["--duration -1.0", "above 0"]),
            (["--max-events", "-5"], ["--max-events", "'-5'"]),
            (["--buffer-mb", "-1"], ["--buffer-mb -1", "power of two"]),
        ]
        for c in cases {
            assertFails(["trace"] + c.args + probe, status: 2, mentions: c.mentions)
        }
    }

    func testDurationThatIsNotAFiniteNumberOfSeconds() {
        // The value is echoed as Swift prints the Double (1e30 as 1e+30).
        for (value, shown) in [("nan", "nan"), ("inf", "inf"), ("1e30", "1e+30")] {
            assertFails(["trace", "--duration", value, argsPie + ":add2", "--", argsPie], status: 2,
                        mentions: ["--duration", shown])
        }
    }

    func testGlobBeyondMaxProbes() {
        assertFails(["trace", "--max-probes", "2", argsPie + ":take_*", "--", argsPie], status: 2,
                    mentions: ["3 functions match", "--max-probes 2"], hint: "narrow the glob")
    }

    func testUnwritableOutputFile() {
        let path = "/nonexistent/dir/out.json"
        assertFails(["trace", "-o", path, argsPie + ":add2", "--", argsPie], status: 1, mentions: [path])
        // A symbolic link is not written through (one planted in /tmp could redirect root's output).
        let link = fixtures.directory + "/link.json"
        symlink(fixtures.directory + "/target.json", link)
        assertFails(["trace", "-o", link, argsPie + ":add2", "--", argsPie], status: 1, mentions: [link, "symbolic link"],
                    hint: "the path it points to")
    }

    // MARK: list

    func testListMissingFileAndDirectory() {
        assertFails(["list", "/nonexistent"], status: 2, mentions: ["/nonexistent"])
        assertFails(["list", "/tmp"], status: 2, mentions: ["/tmp", "directory"])
        assertFails(["list", fixtures.text], status: 2, mentions: [fixtures.text, "not an ELF"])
    }
}

/// utap's live attachments as `bpftool link list` shows them: one link per uprobe
/// (perf-event path) or per file and direction (uprobe multi-link path), each running one
/// of utap's programs. (bpftool perf list misses multi-links, and this bpftool cannot show
/// a multi-link's file, so links are told apart by program and by id.)
enum UtapLinks {
    static let bpftool: String? = ["/usr/sbin/bpftool", "/usr/bin/bpftool", "/sbin/bpftool", "/usr/local/sbin/bpftool"]
        .first { access($0, X_OK) == 0 }

    private static func list(_ what: [String]) throws -> [[String: Any]] {
        let r = try Harness.run(bpftool!, ["-j"] + what, timeout: 10)
        guard r.status == 0, let list = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else {
            throw XCTSkip("bpftool \(what.joined(separator: " ")) failed (\(r.status)): \(r.stderr)")
        }
        return list
    }

    /// Ids of the links whose program is one of utap's (utap_entry, utap_return_multi, ...).
    static func current() throws -> Set<Int> {
        let programs = Set(try list(["prog", "show"])
            .filter { ($0["name"] as? String)?.hasPrefix("utap_") == true }
            .compactMap { $0["id"] as? Int })
        return Set(try list(["link", "list"])
            .filter { programs.contains($0["prog_id"] as? Int ?? -1) }
            .compactMap { $0["id"] as? Int })
    }

    /// utap links that did not exist in `before`, after waiting up to 3 s for them to go:
    /// a utap run by another test at the same time holds its links for a moment; a leaked
    /// link stays.
    static func left(since before: Set<Int>) throws -> Set<Int> {
        let deadline = Date().addingTimeInterval(3)
        var left = try current().subtracting(before)
        while !left.isEmpty && Date() < deadline {
            usleep(100_000)
            left = try current().subtracting(before)
        }
        return left
    }
}

/// Bad files made for the tests in a temporary directory, removed when released.
private final class Fixtures {
    let directory: String
    /// A text file: not ELF.
    let text: String
    /// args_pie with e_machine patched to EM_AARCH64.
    let aarch64: String
    /// args_pie's header patched to a 32-bit (ELFCLASS32) EM_386 file.
    let x86: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "utap-errors-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        directory = String(cString: made)
        chmod(directory, 0o755)
        text = directory + "/notes.txt"
        try "just some text\n".write(toFile: text, atomically: true, encoding: .utf8)
        aarch64 = directory + "/args_aarch64"
        var elf = try Data(contentsOf: URL(fileURLWithPath: Harness.target("args_pie")))
        elf[18] = 0xB7  // e_machine = EM_AARCH64 (183), little-endian
        elf[19] = 0x00
        try elf.write(to: URL(fileURLWithPath: aarch64))
        chmod(aarch64, 0o755)
        x86 = directory + "/args_x86"
        elf[4] = 1      // ELFCLASS32
        elf[18] = 0x03  // e_machine = EM_386
        try elf.write(to: URL(fileURLWithPath: x86))
        chmod(x86, 0o755)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `path` if `launcher`'s user can execute it there, else a copy it can execute.
    func executableByNobody(_ path: String, as launcher: [String]) throws -> String {
        func runnable(_ candidate: String) throws -> Bool {
            try Harness.run(launcher[0], Array(launcher.dropFirst()) + ["/usr/bin/test", "-x", candidate]).status == 0
        }
        if try runnable(path) { return path }
        let copy = directory + "/utap"
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        chmod(copy, 0o755)
        XCTAssertTrue(try runnable(copy), "user nobody can execute \(copy)")
        return copy
    }
}
