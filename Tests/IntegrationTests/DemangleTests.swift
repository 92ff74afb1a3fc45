import Foundation
import Glibc
import XCTest

/// Probes written with demangled C++, Rust (v0 and legacy) and Swift names, globs over
/// them, `utap list` and `--stack` showing them; exact hit counts on the demangle_* targets.
final class DemangleTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
        try Harness.requireTargets(["demangle_cxx", "demangle_rs_v0", "demangle_rs_legacy", "demangle_swift"],
                                   builtWith: "g++, rustc and swiftc")
    }

    /// Runs `utap SUBCOMMAND -o FILE OPTIONS PROBES -- TARGET ARGS` and reads FILE.
    private func run(_ subcommand: String, _ probes: [String], _ target: String, _ args: [String],
                     options: [String] = ["--format", "json"]) throws -> Harness.Result {
        let path = NSTemporaryDirectory() + "utap-demangle-\(getpid()).out"
        defer { unlink(path) }
        var r = try Harness.utap([subcommand, "-o", path] + options + probes + ["--", Harness.target(target)] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        r.output = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return r
    }

    /// Hits per probe name (every probe a glob expanded to is listed, hit or not), from
    /// the summary of `utap trace`.
    private func counts(_ probes: [String], _ target: String, _ args: [String] = []) throws -> [String: Int] {
        let r = try run("trace", probes, target, args)
        let perProbe = r.summary?["probes"] as? [String: [String: Any]] ?? [:]
        XCTAssertTrue(perProbe.values.allSatisfy { $0["lost"] as? Int == 0 }, "\(perProbe)")
        return perProbe.compactMapValues { $0["events"] as? Int }
    }

    private func lines(_ text: String) -> [String] {
        text.split(separator: "\n").map(String.init)
    }

    // MARK: - C++

    func testCxxMethodsByDemangledName() throws {
        let r = try run("trace", ["shapes::Counter::bump(int) by=arg1:s32", "shapes::Counter::total",
                                  "shapes::twice<int> x=arg0:s32", "shapes::twice<long>(long)"], "demangle_cxx", ["7"])
        XCTAssertTrue(r.stdout.contains("total=22 twice=54"), r.stdout)
        // Events are named as the probes were written.
        XCTAssertEqual(r.events("shapes::Counter::bump(int)").map { $0.int("by")! }, Array(0..<7))
        XCTAssertEqual(r.events("shapes::Counter::total").count, 1)
        XCTAssertEqual(r.events("shapes::twice<int>").map { $0.int("x")! }, [1, 2, 3])
        XCTAssertEqual(r.events("shapes::twice<long>(long)").count, 1)
        XCTAssertEqual(r.summary?["events"] as? Int, 12)
    }

    func testCxxOverloadsAreRefusedAndGlobsAttachThemAll() throws {
        let refused = try Harness.utap(["trace", "shapes::Counter::bump", "--", Harness.target("demangle_cxx")])
        XCTAssertEqual(refused.status, 2)
        let first = lines(refused.stderr).first ?? ""
        XCTAssertTrue(first.hasPrefix("utap: error: probe 'shapes::Counter::bump': 'shapes::Counter::bump' names 2 functions in "), first)
        XCTAssertTrue(first.contains("shapes::Counter::bump(int)") && first.contains("shapes::Counter::bump(double)"), first)
        XCTAssertTrue(refused.stderr.contains("utap: hint: probe them all with a glob ('shapes::Counter::bump*')"), refused.stderr)

        XCTAssertEqual(try counts(["shapes::Counter::bump*", "*::twice"], "demangle_cxx", ["7"]), [
            "shapes::Counter::bump(int)": 7,
            "shapes::Counter::bump(double)": 2,
            "int shapes::twice<int>(int)": 3,
            "long shapes::twice<long>(long)": 1,
        ])

        let misspelt = try Harness.utap(["trace", "shapes::Counter::bum", "--", Harness.target("demangle_cxx")])
        XCTAssertEqual(misspelt.status, 2)
        XCTAssertTrue(misspelt.stderr.contains("utap: hint: did you mean: shapes::Counter::bump"), misspelt.stderr)
    }

    /// At a function's entry the frame-pointer walk skips the immediate caller (total());
    /// report() is the next frame.
    func testCxxStacksAreDemangled() throws {
        let r = try run("trace", ["shapes::detail::sum"], "demangle_cxx", ["3"], options: ["--format", "json", "--stack"])
        let stacks = r.events("shapes::detail::sum").map { $0["stack"] as? [String] ?? [] }
        XCTAssertEqual(stacks.count, 1)
        let stack = stacks.first ?? []
        let path = Harness.target("demangle_cxx")
        XCTAssertTrue(stack.first?.contains(" shapes::detail::sum(long, double)+0x") == true, "\(stack)")
        XCTAssertTrue(stack.contains { $0.contains(" shapes::report(shapes::Counter const&)+0x") && $0.hasSuffix("(\(path))") }, "\(stack)")
        XCTAssertTrue(stack.contains { $0.contains(" main+0x") }, "\(stack)")
    }

    // MARK: - Rust

    func testRustV0Names() throws {
        let listed = try Harness.utap(["list", "-v", Harness.target("demangle_rs_v0"), "demangle_rs::Counter::*"])
        XCTAssertTrue(listed.stdout.contains(" <demangle_rs::Counter>::bump _RNvM"), "v0 mangling: \(listed.stdout)")
        XCTAssertEqual(try counts(["demangle_rs::Counter::bump", "<demangle_rs::Counter>::bump",
                                   "*Square?as?demangle_rs::Shape>::area",
                                   "demangle_rs::twice::<u32>", "demangle_rs::twice::<u64>"], "demangle_rs_v0", ["7"]), [
            "demangle_rs::Counter::bump": 7,
            "<demangle_rs::Counter>::bump": 7,
            "<demangle_rs::Square as demangle_rs::Shape>::area": 2,
            "demangle_rs::twice::<u32>": 1,
            "demangle_rs::twice::<u64>": 3,
        ])
        let traced = try run("trace", ["demangle_rs::Counter::bump by=arg1"], "demangle_rs_v0", ["5"])
        XCTAssertEqual(traced.events("demangle_rs::Counter::bump").map { $0.int("by")! }, Array(0..<5))
        XCTAssertTrue(traced.stdout.contains("total=10 area=18 twice=54"), traced.stdout)
    }

    func testRustLegacyNames() throws {
        let listed = try Harness.utap(["list", "-v", Harness.target("demangle_rs_legacy"), "demangle_rs::Counter::*"])
        XCTAssertTrue(listed.stdout.contains(" demangle_rs::Counter::bump _ZN11demangle_rs7Counter4bump17h"), "legacy mangling: \(listed.stdout)")
        XCTAssertEqual(try counts(["demangle_rs::Counter::bump", "*Square?as?demangle_rs::Shape>::area"], "demangle_rs_legacy", ["7"]), [
            "demangle_rs::Counter::bump": 7,
            "<demangle_rs::Square as demangle_rs::Shape>::area": 2,
        ])
        // Legacy names carry no generic arguments: both instances of twice read alike, so
        // the plain name is refused and a glob names each by its symbol.
        let refused = try Harness.utap(["trace", "demangle_rs::twice", "--", Harness.target("demangle_rs_legacy")])
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("'demangle_rs::twice' names 2 functions"), refused.stderr)
        let twice = try counts(["demangle_rs::twice*"], "demangle_rs_legacy", ["7"])
        XCTAssertEqual(twice.values.sorted(), [1, 3])
        XCTAssertTrue(twice.keys.allSatisfy { $0.hasPrefix("_ZN11demangle_rs5twice17h") }, "\(twice)")
    }

    // MARK: - Swift

    func testSwiftNames() throws {
        let r = try run("trace", ["demangle_swift.Counter.bump by=arg0", "demangle_swift.report"], "demangle_swift", ["7"])
        XCTAssertTrue(r.stdout.contains("total=21"), r.stdout)
        XCTAssertEqual(r.events("demangle_swift.Counter.bump").map { $0.int("by")! }, Array(0..<7))
        XCTAssertEqual(r.events("demangle_swift.report").count, 1)
        XCTAssertEqual(try counts(["demangle_swift.Counter.bump*"], "demangle_swift", ["4"]),
                       ["demangle_swift.Counter.bump(by: Swift.Int) -> Swift.Int": 4])
    }

    // MARK: - utap list

    func testListShowsDemangledNamesSorted() throws {
        let cxx = try Harness.utap(["list", Harness.target("demangle_cxx"), "shapes::*"])
        XCTAssertEqual(cxx.status, 0, cxx.stderr)
        XCTAssertEqual(lines(cxx.stdout), [
            "int shapes::twice<int>(int)",
            "long shapes::twice<long>(long)",
            "shapes::Counter::bump(double)",
            "shapes::Counter::bump(int)",
            "shapes::Counter::total() const",
            "shapes::detail::sum(long, double)",
            "shapes::report(shapes::Counter const&)",
        ])
        // -v: the mangled name is the last word; PATTERN may be the mangled name.
        let verbose = try Harness.utap(["list", "-v", Harness.target("demangle_cxx"), "_ZNK6shapes*"])
        XCTAssertEqual(lines(verbose.stdout).map { $0.split(separator: " ").suffix(3).joined(separator: " ") },
                       ["shapes::Counter::total() const _ZNK6shapes7Counter5totalEv"])
        XCTAssertTrue(verbose.stdout.hasPrefix("0x"), verbose.stdout)

        let rust = try Harness.utap(["list", Harness.target("demangle_rs_v0"), "demangle_rs::*"])
        XCTAssertEqual(lines(rust.stdout), [
            "<demangle_rs::Counter>::bump",
            "demangle_rs::main",
            "demangle_rs::twice::<u32>",
            "demangle_rs::twice::<u64>",
        ])
        let swift = try Harness.utap(["list", Harness.target("demangle_swift"), "demangle_swift.*"])
        XCTAssertTrue(lines(swift.stdout).contains("demangle_swift.Counter.bump(by: Swift.Int) -> Swift.Int"), swift.stdout)
        XCTAssertTrue(lines(swift.stdout).contains("demangle_swift.report(demangle_swift.Counter) -> Swift.Int"), swift.stdout)
    }
}
