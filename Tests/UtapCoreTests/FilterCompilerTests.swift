import XCTest
@testable import UtapCore

final class FilterCompilerTests: XCTestCase {
    typealias I = FilterInstruction

    func testPostfixOrderAndPrecedence() throws {
        let program = try FilterCompiler.compile(#"arg0 > 100 && comm == "nginx" || !(tid != 7)"#)
        XCTAssertEqual(program.map(\.operation), [.compare, .compare, .and, .compare, .not, .or])
        XCTAssertEqual(program[0], I(operation: .compare, operand: .arg0, comparison: .gt, isSigned: true, width: 8, value: 100))
        XCTAssertEqual(program[1].operand, .comm)
        // "nginx" as the first 8 bytes of a NUL-padded 16-byte name, little-endian.
        XCTAssertEqual(program[1].value, 0x78_6e_69_67_6e)
        XCTAssertEqual(program[1].value2, 0)
        XCTAssertEqual(program[3], I(operation: .compare, operand: .tid, comparison: .ne, width: 4, value: 7))
    }

    func testValuesTypesAndDurations() throws {
        XCTAssertEqual(try FilterCompiler.compile("arg1 == -1")[0].value, UInt64.max)
        XCTAssertEqual(try FilterCompiler.compile("arg1:u32 >= 0xffffffff")[0],
                       I(operation: .compare, operand: .arg1, comparison: .ge, isSigned: false, width: 4, value: 0xffff_ffff))
        XCTAssertEqual(try FilterCompiler.compile("latency > 10ms")[0].value, 10_000_000)
        XCTAssertEqual(try FilterCompiler.compile("latency <= 2s")[0].value, 2_000_000_000)
        XCTAssertEqual(try FilterCompiler.compile("latency < 500")[0].value, 500)
        XCTAssertEqual(try FilterCompiler.compile("arg0 == -9223372036854775808")[0].value, 1 << 63)
        XCTAssertTrue(FilterCompiler.needsReturn(try FilterCompiler.compile("pid == 1 || ret == 0")))
        XCTAssertFalse(FilterCompiler.needsReturn(try FilterCompiler.compile("pid == 1")))
    }

    func testBadFiltersAreUsageErrors() {
        for bad in ["", "arg0", "arg0 >", "arg6 == 1", "foo == 1", "arg0 == x", "comm > \"a\"", "comm == nginx",
                    "comm == \"sixteen-bytes-xx\"", "(arg0 == 1", "arg0 == 1)", "pid:u8 == 1", "arg0:s128 == 1",
                    "latency > -5ms", "arg0 == 1 &&", "arg0 == 99999999999999999999",
                    Array(repeating: "arg0 == 1", count: 17).joined(separator: " && ")] {
            XCTAssertThrowsError(try FilterCompiler.compile(bad), bad) { error in
                XCTAssertEqual((error as? UtapError)?.code, .usage, bad)
                XCTAssertTrue((error as? UtapError)?.message.hasPrefix("--filter") == true, bad)
            }
        }
    }
}
