import Foundation
import XCTest

/// `utap doctor` and `utap list` against this machine.
final class DoctorListTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    func testHelpHasExamplesAndVersionIsOneLine() throws {
        for command in [[], ["trace"], ["count"], ["latency"], ["list"]] {
            let r = try Harness.utap(command + ["--help"])
            XCTAssertEqual(r.status, 0, "\(command)")
            XCTAssertTrue(r.stdout.contains("Examples:\n  utap "), "\(command): \(r.stdout)")
        }
        let version = try Harness.utap(["--version"])
        XCTAssertEqual(version.status, 0)
        XCTAssertNotNil(try Regex(#"utap \d+\.\d+\.\d+\n"#).wholeMatch(in: version.stdout), version.stdout)
    }

    func testDoctorRunsARealRoundTripAndPicksBPF() throws {
        let r = try Harness.utap(["doctor"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("ok    bpf round trip: probed libc:exit in /usr/bin/true, 1 of 1 call seen"), r.stdout)
        XCTAssertTrue(r.stdout.contains("ok    ptrace round trip: probed libc:exit in /usr/bin/true, 1 of 1 call seen"), r.stdout)
        XCTAssertTrue(r.stdout.contains("--    ptrace wake-up: idle CPUs kept awake while hits come back to back"), r.stdout)
        XCTAssertFalse(r.stdout.contains("FAIL"), r.stdout)
        XCTAssertTrue(r.stdout.hasSuffix("backend auto picks: bpf (every bpf check passed)\n"), r.stdout)
    }

    /// Without the BPF capabilities the bpf checks fail, ptrace's pass, and auto picks ptrace.
    func testDoctorPicksPtraceWithoutBPFCapabilities() throws {
        let r = try Harness.run("/usr/sbin/capsh", ["--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c",
                                                    "exec '\(Harness.utap)' doctor"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("FAIL  capabilities: have CAP_SYS_PTRACE; missing CAP_BPF CAP_PERFMON CAP_SYS_ADMIN"), r.stdout)
        XCTAssertTrue(r.stdout.contains("ok    ptrace round trip: probed libc:exit in /usr/bin/true, 1 of 1 call seen"), r.stdout)
        XCTAssertTrue(r.stdout.contains("backend auto picks: ptrace for -p PID and -- COMMAND (bpf unusable: capabilities"), r.stdout)
    }

    func testListMatchesTheSymbolTable() throws {
        // The expected set comes from readelf: every defined FUNC symbol with a '_'.
        let readelf = try Harness.run("/bin/sh", ["-c", "readelf -sW '\(Harness.target("args_pie"))' | " +
            "awk '$4 == \"FUNC\" && $7 != \"UND\" && $8 ~ /_/ { sub(/@.*/, \"\", $8); print $8 }' | LC_ALL=C sort -u"])
        let expected = readelf.stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(expected.contains("take_ints") && expected.contains("first_call"), readelf.stdout)
        let r = try Harness.utap(["list", Harness.target("args_pie"), "*_*"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.split(separator: "\n").map(String.init), expected)
        let stripped = try Harness.utap(["list", Harness.target("args_stripped"), "add*"])
        XCTAssertEqual(stripped.stdout, "add2\n", "found through .dynsym alone")
        let libc = try Harness.utap(["list", "-v", "libc", "strlen"])
        XCTAssertTrue(libc.stdout.hasSuffix(" -             strlen [ifunc]\n"), libc.stdout)
        // ENTRY: where a probe by name goes and whether the kernel emulates it there.
        func entry(_ target: String, _ name: String) throws -> String {
            let line = try Harness.utap(["list", "-v", Harness.target(target), name]).stdout
            return line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(2).prefix(2).joined(separator: " ")
        }
        XCTAssertEqual(try entry("args_nopie", "take_str"), "+3 emulated", "test %rdi,%rdi; je")
        XCTAssertEqual(try entry("args_nopie", "add2"), "+0 stepped", "mov %rdi,utap_sink(%rip)")
        XCTAssertEqual(try entry("args_pie", "add2"), "+0 stepped", "endbr64; mov: stepped either way, so on endbr64")
        XCTAssertEqual(try entry("fib", "fib"), "+0 emulated", "push")
        let none = try Harness.utap(["list", Harness.target("args_pie"), "nothing_matches*"])
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.stderr.hasPrefix("utap: error: "), none.stderr)
    }

    /// A glob attaches exactly the symbol table's matching functions, one probe each.
    func testGlobExpandsToTheSymbolTablesMatches() throws {
        let pie = Harness.target("args_pie")
        let readelf = try Harness.run("/bin/sh", ["-c", "readelf -sW '\(pie)' | " +
            "awk '$4 == \"FUNC\" && $7 != \"UND\" && $8 ~ /^take_/ { print $8 }' | LC_ALL=C sort -u"])
        let expected = readelf.stdout.split(separator: "\n").map { "\(pie):\($0)" }
        XCTAssertEqual(expected.count, 3, readelf.stdout)
        let r = try Harness.utap(["trace", "--format", "json", "-o", "/dev/null", pie + ":take_* a=arg0", "--", pie])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("Tracing \(expected.count) probes"), r.stderr)
        let summary = r.stderr.split(separator: "\n").filter { $0.hasPrefix("  ") }
            .compactMap { $0.split(separator: " ").first.map(String.init) }
        XCTAssertEqual(summary.sorted(), expected)
    }
}
