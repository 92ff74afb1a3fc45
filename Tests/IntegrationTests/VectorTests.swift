import Foundation
import Glibc
import XCTest

/// Functions that open with vector (AVX, AVX-512) instructions, which the kernel's x86
/// uprobes decode as the legacy opcode byte they carry: some it refuses, some it never
/// fires on, some it emulates as jumps. tests/targets/vector.c checks every result it
/// computes, so a probe that changes what the program does makes it exit 1.
final class VectorTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private let program = Harness.target("vector")
    /// vector.c calls e_regs only where the CPU has AVX-512 BW and VL.
    private var evexCalls: Int {
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        return flags.contains(" avx512bw") && flags.contains(" avx512vl") ? 40 : 0
    }

    /// Hits per probe from `utap trace` JSON's summary, after checking that the program ran
    /// as it does untraced.
    private func counts(_ probes: [String], options: [String] = []) throws -> [String: Int] {
        let path = NSTemporaryDirectory() + "utap-vector-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap(["trace", "--format", "json", "-o", path] + options + probes + ["--", program, "40"])
        r.output = try? String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "v_regs=40 v_load=40 c_vec=40 e_regs=\(evexCalls) memset=40 bad=0\n", r.stderr)
        let perProbe = r.summary?["probes"] as? [String: [String: Any]] ?? [:]
        return perProbe.compactMapValues { $0["events"] as? Int }
    }

    /// By name, the probe goes past vector instructions that write only vector registers
    /// (v_regs, e_regs, libc's memset) or stays on endbr64 (c_vec): exact counts, and the
    /// program computes what it computes untraced. The old placement put e_regs' probe on
    /// an EVEX vpbroadcastb, which the kernel ran as `jp`, and memset filled wrong bytes.
    func testVectorOpeningsAreProbedPastOrBeforeThem() throws {
        try Harness.eachBackend { backend in
            XCTAssertEqual(try counts(["v_regs", "c_vec", "e_regs", "libc:memset"]),
                           ["v_regs": 40, "c_vec": 40, "e_regs": evexCalls, "libc:memset": 40], backend)
        }
        let list = try Harness.utap(["list", "-v", program, "[vcel]_*"])
        XCTAssertEqual(list.stdout.split(separator: "\n").map { $0.split(separator: " ").dropFirst(2).joined(separator: " ") },
                       ["+0 stepped c_vec", "+6 stepped e_regs", "+0 refused l_lock", "+0 vector v_load", "+9 stepped v_regs"])
    }

    /// v_load opens with a vector load: no site before it. bpf refuses it (the kernel
    /// silently never fired there); ptrace steps it out of line; a glob leaves it out on
    /// both, with a warning, and takes the rest. l_lock neither backend probes.
    func testAVectorInstructionSiteIsRefusedByBPFAndSteppedByPtrace() throws {
        let refused = try Harness.utap(["count", "--backend", "bpf", "v_load", "--", program, "40"])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertEqual(refused.stderr.split(separator: "\n").count, 2, refused.stderr)
        XCTAssertTrue(refused.stderr.hasPrefix("utap: error: probe 'v_load': the kernel's uprobes mishandle the vector (AVX) instruction at 0x"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("hint: probe another instruction of the function, or use --backend ptrace"), refused.stderr)
        XCTAssertEqual(refused.stdout, "", "the program was not run")

        XCTAssertEqual(try counts(["v_load", "e_regs"], options: ["--backend", "ptrace"]), ["v_load": 40, "e_regs": evexCalls])

        // l_lock opens with a lock prefix: the kernel refuses it, silently for a file
        // mapped after attaching (count 0 before utap checked); ptrace refuses it too.
        let locked = try Harness.utap(["count", "--backend", "bpf", "l_lock", "--", program, "40"])
        XCTAssertEqual(locked.status, 1, locked.stderr)
        XCTAssertTrue(locked.stderr.hasPrefix("utap: error: probe 'l_lock': the kernel's uprobes refuse the instruction at 0x"), locked.stderr)
        XCTAssertTrue(locked.stderr.contains(" in l_lock (lock prefix)\n"), locked.stderr)
        let stepped = try Harness.utap(["count", "--backend", "ptrace", "l_lock", "--", program, "40"])
        XCTAssertEqual(stepped.status, 2, stepped.stderr)
        XCTAssertTrue(stepped.stderr.contains("cannot probe this instruction (lock prefix)"), stepped.stderr)

        try Harness.eachBackend { backend in
            let path = NSTemporaryDirectory() + "utap-vector-glob-\(getpid()).out"
            defer { unlink(path) }
            let r = try Harness.utap(["count", "--format", "json", "-o", path, "[vcel]_*", "--", program, "40"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stderr.contains("utap: warning: probe '[vcel]_*': 2 of the functions matching '[vcel]_*' cannot be probed, "
                                            + "left out: l_lock (lock prefix), v_load (a vector instruction)\n"), r.stderr)
            let json = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            for (name, calls) in [("c_vec", 40), ("e_regs", evexCalls), ("v_regs", 40)] {
                XCTAssertTrue(json.contains("\"probe\":\"\(name)\",\"count\":\(calls)"), "\(backend) \(name): \(json)")
            }
            XCTAssertFalse(json.contains("v_load") || json.contains("l_lock"), json)
        }
    }
}
