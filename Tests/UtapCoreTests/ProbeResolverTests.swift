import XCTest
@testable import UtapCore

/// ProbeResolver on programs compiled at test time.
final class ProbeResolverTests: XCTestCase {
    /// The resolver places entry probes by `entryOffset`, on the function's own code; an
    /// explicit +0 stays at the first byte.
    func testResolverPlacesEntryProbesPastFlagTests() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let path = try Toolchain.compile("""
            __asm__(".text\\n.globl checked\\n.type checked,@function\\nchecked:\\n"
                    "  test %rdi,%rdi\\n  je 1f\\n  push %rbp\\n  pop %rbp\\n1: ret\\n.size checked,.-checked\\n"
                    ".globl looping\\n.type looping,@function\\nlooping:\\n"
                    "  test %rdi,%rdi\\n2: je 1f\\n  dec %rdi\\n  jmp 2b\\n1: ret\\n.size looping,.-looping\\n");
            int main(void) { return 0; }
            """, to: "prog", in: directory, flags: [])
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
        let directory = try Toolchain.temporaryDirectory(self)
        let path = try Toolchain.compile("""
            __asm__(".text\\n.globl warm\\n.type warm,@function\\nwarm:\\n  push %rbp\\n  pop %rbp\\n  ret\\n.size warm,.-warm\\n"
                    ".type warm.cold,@function\\nwarm.cold:\\n  push %rbp\\n  ud2\\n.size warm.cold,.-warm.cold\\n"
                    ".type warm.cold.1,@function\\nwarm.cold.1:\\n  push %rbp\\n  ud2\\n.size warm.cold.1,.-warm.cold.1\\n"
                    ".globl warm.coldness\\n.type warm.coldness,@function\\nwarm.coldness:\\n  push %rbp\\n  pop %rbp\\n  ret\\n"
                    ".size warm.coldness,.-warm.coldness\\n");
            int main(void) { return 0; }
            """, to: "prog", in: directory, flags: [])
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
}
