import XCTest
@testable import UtapCore

/// ProbeResolver on programs compiled at test time.
final class ProbeResolverTests: XCTestCase {
    /// A program with `functions` (name, assembly lines) as written, and their symbols.
    private func program(_ functions: KeyValuePairs<String, [String]>) throws -> String {
        let assembly = functions.map { name, lines in
            ([".type \(name),@function", "\(name):"] + lines.map { "  " + $0 } + [".size \(name),.-\(name)"])
                .joined(separator: "\\n")
        }.joined(separator: "\\n")
        return try Toolchain.compile("__asm__(\".text\\n\(assembly)\\n\");\nint main(void) { return 0; }\n",
                                     to: "prog", in: Toolchain.temporaryDirectory(self), flags: [])
    }

    /// The resolver places entry probes by `entryOffset`, on the function's own code; an
    /// explicit +0 stays at the first byte.
    func testResolverPlacesEntryProbesPastFlagTests() throws {
        let path = try program([
            "checked": ["test %rdi,%rdi", "je 1f", "push %rbp", "pop %rbp", "1: ret"],
            "looping": ["test %rdi,%rdi", "2: je 1f", "dec %rdi", "jmp 2b", "1: ret"],
        ])
        let image = try ELFImage.open(path)
        var resolver = ProbeResolver(pid: nil, executable: nil)
        func address(_ location: String) throws -> UInt64? {
            try resolver.resolve(try ProbeParser.parse(path + ":" + location)).first?.address
        }
        let checked = try XCTUnwrap(image.functions(named: "checked").first).address
        let looping = try XCTUnwrap(image.functions(named: "looping").first).address
        XCTAssertEqual(try address("checked"), checked + 3)
        XCTAssertEqual(try address("checked%return"), checked + 3, "rsp still points at the return address")
        XCTAssertEqual(try address("checked+0"), checked)
        XCTAssertEqual(try address("looping"), looping, "a jump lands on the je")
    }

    func testGlobsLeaveOutColdFragments() throws {
        let entry = ["push %rbp", "pop %rbp", "ret"], fragment = ["push %rbp", "ud2"]
        let path = try program(["warm": entry, "warm.cold": fragment, "warm.cold.1": fragment, "warm.coldness": entry])
        var resolver = ProbeResolver(pid: nil, executable: nil)
        func names(_ location: String) throws -> [String] {
            try resolver.resolve(try ProbeParser.parse(path + ":" + location)).map(\.function!)
        }
        XCTAssertEqual(try names("warm*"), ["warm", "warm.coldness"])
        XCTAssertEqual(try names("warm.cold*"), ["warm.cold", "warm.cold.1", "warm.coldness"], "asked for by name")
        XCTAssertEqual(try names("warm.cold"), ["warm.cold"], "a name is taken as given")
        XCTAssertTrue(ProbeResolver.isColdFragment("_ZN1a1bEv.cold"))
        XCTAssertTrue(ProbeResolver.isColdFragment("f.cold.12"))
        XCTAssertFalse(ProbeResolver.isColdFragment("f.cold.x"))
        XCTAssertFalse(ProbeResolver.isColdFragment("cold"))
        XCTAssertFalse(ProbeResolver.isColdFragment("f.part.0"))
    }

    /// Local functions of one name from two files (libc has eight of some) are told apart
    /// by address in a glob's probe names.
    func testGlobNamesSameNamedLocalFunctionsByAddress() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let other = directory + "/other.c"
        try "__attribute__((noinline)) static int helper(int x) { return x * 3; }\nint other(int x) { return helper(x); }\n"
            .write(toFile: other, atomically: true, encoding: .utf8)
        let path = try Toolchain.compile("""
            __attribute__((noinline)) static int helper(int x) { return x + 1; }
            int other(int);
            int main(int argc, char **argv) { (void)argv; return helper(argc) + other(argc); }
            """, to: "twice", in: directory, flags: [other])
        let helpers = try ELFImage.open(path).functions(named: "helper").map(\.address)
        XCTAssertEqual(helpers.count, 2)
        var resolver = ProbeResolver(pid: nil, executable: nil)
        let names = try resolver.resolve(try ProbeParser.parse(path + ":help*")).map(\.name)
        XCTAssertEqual(names.sorted(), helpers.map { "\(path):helper@0x\(String($0, radix: 16))" }.sorted())
    }

    /// On ret sites, a glob's functions that never return are left out with one warning;
    /// a probe naming one is refused, as is a glob that matches nothing else.
    func testReturnSitesLeaveOutFunctionsWithoutARet() throws {
        let path = try program(["stops": ["push %rbp", "ud2"], "steps": ["push %rbp", "pop %rbp", "ret"],
                                "stalls": ["1: jmp 1b"]])
        var resolver = ProbeResolver(pid: nil, executable: nil)
        func place(_ location: String) throws -> [String] {
            let spec = try ProbeParser.parse(path + ":" + location)
            return try resolver.placeReturns(try resolver.resolve(spec), of: spec, mode: .sites).map(\.function!)
        }
        XCTAssertEqual(try place("st*%return"), ["steps"])
        XCTAssertEqual(resolver.warnings.count, 1)
        XCTAssertTrue(resolver.warnings[0].contains("2 of the functions matching 'st*' have no ret"), resolver.warnings[0])
        XCTAssertThrowsError(try place("stops%return")) { error in
            XCTAssertTrue((error as! UtapError).message.contains("stops has no ret instruction"), "\(error)")
        }
        XCTAssertThrowsError(try place("sta*%return")) { error in
            XCTAssertTrue((error as! UtapError).message.contains("no function matching 'sta*' has a ret"), "\(error)")
        }
        XCTAssertEqual(try place("st*"), ["stalls", "steps", "stops"].sorted(), "entry probes are all kept")
    }

    /// A library probe for a statically linked COMMAND would never fire: said once.
    func testLibraryProbesOfAStaticCommandAreWarnedAbout() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let program = "#include <stdlib.h>\nint main(void) { free(malloc(1)); return 0; }\n"
        let dynamic = try Toolchain.compile(program, to: "dynamic", in: directory, flags: [])
        let fixed = try Toolchain.compile(program, to: "static", in: directory, flags: ["-static"])
        var resolver = ProbeResolver(pid: nil, executable: fixed)
        _ = try resolver.resolve(try ProbeParser.parse("libc:malloc"))
        _ = try resolver.resolve(try ProbeParser.parse("libc:free"))
        _ = try resolver.resolve(try ProbeParser.parse("static:main"))
        XCTAssertEqual(resolver.warnings.count, 1, "\(resolver.warnings)")
        XCTAssertTrue(resolver.warnings.first?.hasPrefix("\(fixed) links no shared library: it does not run libc's code") == true)
        var linked = ProbeResolver(pid: nil, executable: dynamic)
        _ = try linked.resolve(try ProbeParser.parse("libc:malloc"))
        XCTAssertEqual(linked.warnings, [])
        // The program's own code, named by its path: nothing to warn about.
        var own = ProbeResolver(pid: nil, executable: fixed)
        _ = try own.resolve(try ProbeParser.parse(fixed + ":main"))
        XCTAssertEqual(own.warnings, [])
    }
}
