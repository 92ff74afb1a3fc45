import XCTest
@testable import UtapCore

/// The probe grammar of DESIGN.md, checked value by value. Tables carry the source line of
/// each row so a failure points at the row, not at the loop.
final class ProbeParserTests: XCTestCase {
    private struct Valid {
        let text: String
        let expected: ProbeSpec
        let line: UInt
        init(_ text: String, _ expected: ProbeSpec, line: UInt = #line) {
            self.text = text
            self.expected = expected
            self.line = line
        }
    }

    private func check(_ cases: [Valid]) {
        for c in cases {
            do {
                let spec = try ProbeParser.parse(c.text)
                XCTAssertEqual(spec, c.expected, "parsing \(String(reflecting: c.text))", line: c.line)
            } catch {
                XCTFail("parsing \(String(reflecting: c.text)) threw \(error)", line: c.line)
            }
        }
    }

    private func spec(_ name: String, target: String? = nil, _ location: ProbeLocation,
                      _ kind: ProbeKind = .entry, fields: [FieldSpec] = []) -> ProbeSpec {
        ProbeSpec(name: name, target: target, location: location, kind: kind, fields: fields)
    }

    // MARK: - Targets and locations

    func testTargetForms() {
        check([
            Valid("/usr/sbin/nginx:ngx_http_process_request_line",
                  spec("/usr/sbin/nginx:ngx_http_process_request_line", target: "/usr/sbin/nginx",
                       .symbol("ngx_http_process_request_line"))),
            Valid("./build/app:main", spec("./build/app:main", target: "./build/app", .symbol("main"))),
            Valid("libc:malloc", spec("libc:malloc", target: "libc", .symbol("malloc"))),
            Valid("libssl.so.3:SSL_write", spec("libssl.so.3:SSL_write", target: "libssl.so.3", .symbol("SSL_write"))),
            Valid("main", spec("main", target: nil, .symbol("main"))),
        ])
    }

    func testCppScopeOperatorIsNotATargetSeparator() {
        check([
            Valid("/bin/app:ns::Class::method",
                  spec("/bin/app:ns::Class::method", target: "/bin/app", .symbol("ns::Class::method"))),
            Valid("ns::f", spec("ns::f", target: nil, .symbol("ns::f"))),
            Valid("ns::Class::method%return",
                  spec("ns::Class::method%return", target: nil, .symbol("ns::Class::method"), .return)),
            Valid("/bin/app:ns::Class::method%return",
                  spec("/bin/app:ns::Class::method%return", target: "/bin/app", .symbol("ns::Class::method"), .return)),
            Valid("libstdc++.so.6:std::terminate",
                  spec("libstdc++.so.6:std::terminate", target: "libstdc++.so.6", .symbol("std::terminate"))),
            Valid("ns::f+8", spec("ns::f+8", target: nil, .symbolOffset("ns::f", 8))),
        ])
    }

    func testReturnSuffix() {
        check([
            Valid("libc:malloc%return", spec("libc:malloc%return", target: "libc", .symbol("malloc"), .return)),
            Valid("free%return", spec("free%return", target: nil, .symbol("free"), .return)),
            // Offset 0 is the function's start, so a return probe there is fine.
            Valid("main+0%return", spec("main+0%return", target: nil, .symbolOffset("main", 0), .return)),
            // Addresses are checked to be function starts at resolve time, not here.
            Valid("libc:0x1f%return", spec("libc:0x1f%return", target: "libc", .address(0x1f), .return)),
        ])
    }

    func testSymbolPlusOffset() {
        check([
            Valid("main+16", spec("main+16", target: nil, .symbolOffset("main", 16))),
            Valid("main+0", spec("main+0", target: nil, .symbolOffset("main", 0))),
            Valid("libc:malloc+0x1f", spec("libc:malloc+0x1f", target: "libc", .symbolOffset("malloc", 0x1f))),
            Valid("/bin/app:f+0X10", spec("/bin/app:f+0X10", target: "/bin/app", .symbolOffset("f", 0x10))),
            Valid("f+0xFFFFFFFFFFFFFFFF", spec("f+0xFFFFFFFFFFFFFFFF", target: nil, .symbolOffset("f", .max))),
            // The offset follows the last '+', so C++ operators keep theirs.
            Valid("ns::operator++4", spec("ns::operator++4", target: nil, .symbolOffset("ns::operator+", 4))),
        ])
    }

    func testAddresses() {
        check([
            Valid("0x401000", spec("0x401000", target: nil, .address(0x401000))),
            Valid("/bin/app:0x401a2b", spec("/bin/app:0x401a2b", target: "/bin/app", .address(0x401a2b))),
            Valid("libc:0XDEADbeef", spec("libc:0XDEADbeef", target: "libc", .address(0xdead_beef))),
            Valid("0x0", spec("0x0", target: nil, .address(0))),
            Valid("0xffffffffffffffff", spec("0xffffffffffffffff", target: nil, .address(.max))),
        ])
    }

    func testGlobs() {
        check([
            Valid("libc:str*", spec("libc:str*", target: "libc", .glob("str*"))),
            Valid("parse_?", spec("parse_?", target: nil, .glob("parse_?"))),
            Valid("[ab]*", spec("[ab]*", target: nil, .glob("[ab]*"))),
            Valid("/bin/app:ns::*", spec("/bin/app:ns::*", target: "/bin/app", .glob("ns::*"))),
            Valid("libc:str*%return", spec("libc:str*%return", target: "libc", .glob("str*"), .return)),
        ])
    }

    // MARK: - Fields

    func testFieldForms() {
        check([
            Valid("foo arg0", spec("foo", .symbol("foo"), fields: [FieldSpec(name: "arg0", source: .arg(0), type: .s64, typeIsDefault: true)])),
            Valid("libc:malloc size=arg0:u64",
                  spec("libc:malloc", target: "libc", .symbol("malloc"),
                       fields: [FieldSpec(name: "size", source: .arg(0), type: .u64)])),
            Valid("libc:malloc%return ret:x",
                  spec("libc:malloc%return", target: "libc", .symbol("malloc"), .return,
                       fields: [FieldSpec(name: "ret", source: .ret, type: .hex)])),
            Valid("foo%return ret", spec("foo%return", .symbol("foo"), .return,
                                         fields: [FieldSpec(name: "ret", source: .ret, type: .s64, typeIsDefault: true)])),
            Valid("foo%return r=ret:bool", spec("foo%return", .symbol("foo"), .return,
                                                fields: [FieldSpec(name: "r", source: .ret, type: .bool)])),
            Valid("foo arg3:u8", spec("foo", .symbol("foo"), fields: [FieldSpec(name: "arg3", source: .arg(3), type: .u8)])),
            Valid("foo _n1=arg1", spec("foo", .symbol("foo"), fields: [FieldSpec(name: "_n1", source: .arg(1), type: .s64, typeIsDefault: true)])),
            // A field name may be the name of a source, and one source may feed several fields.
            Valid("foo arg1=arg0 a=arg0:x",
                  spec("foo", .symbol("foo"), fields: [FieldSpec(name: "arg1", source: .arg(0), type: .s64, typeIsDefault: true),
                                                      FieldSpec(name: "a", source: .arg(0), type: .hex)])),
            Valid("foo arg0 arg1 arg2 arg3 arg4 arg5",
                  spec("foo", .symbol("foo"), fields: (0...5).map { FieldSpec(name: "arg\($0)", source: .arg($0), type: .s64, typeIsDefault: true) })),
            Valid("/bin/app:ns::C::m+0x4 this=arg0:ptr s=arg1:str",
                  spec("/bin/app:ns::C::m+0x4", target: "/bin/app", .symbolOffset("ns::C::m", 4),
                       fields: [FieldSpec(name: "this", source: .arg(0), type: .pointer),
                                FieldSpec(name: "s", source: .arg(1), type: .string(maxLength: 64))])),
        ])
    }

    func testEveryFieldType() {
        let types: [(text: String, type: FieldType, line: UInt)] = [
            ("s8", .s8, #line), ("s16", .s16, #line), ("s32", .s32, #line), ("s64", .s64, #line),
            ("u8", .u8, #line), ("u16", .u16, #line), ("u32", .u32, #line), ("u64", .u64, #line),
            ("x", .hex, #line), ("ptr", .pointer, #line), ("bool", .bool, #line),
            ("str", .string(maxLength: 64), #line),
            ("str[1]", .string(maxLength: 1), #line),
            ("str[64]", .string(maxLength: 64), #line),
            ("str[255]", .string(maxLength: 255), #line),
        ]
        for t in types {
            check([
                Valid("foo v=arg2:\(t.text)", spec("foo", .symbol("foo"), fields: [FieldSpec(name: "v", source: .arg(2), type: t.type)]), line: t.line),
                Valid("foo%return ret:\(t.text)", spec("foo%return", .symbol("foo"), .return, fields: [FieldSpec(name: "ret", source: .ret, type: t.type)]), line: t.line),
            ])
        }
    }

    func testStringLengthConstants() {
        XCTAssertEqual(FieldType.defaultStringLength, 64)
        XCTAssertEqual(FieldType.maxStringLength, 255)
    }

    func testSpacesAndTabsBetweenWords() {
        let fields = [FieldSpec(name: "size", source: .arg(0), type: .u64), FieldSpec(name: "p", source: .arg(1), type: .pointer)]
        let expected = spec("libc:malloc", target: "libc", .symbol("malloc"), fields: fields)
        check([
            Valid("libc:malloc size=arg0:u64 p=arg1:ptr", expected),
            Valid("libc:malloc   size=arg0:u64     p=arg1:ptr", expected),
            Valid("libc:malloc\tsize=arg0:u64\t\tp=arg1:ptr", expected),
            Valid("  \tlibc:malloc \t size=arg0:u64\t p=arg1:ptr \t", expected),
            Valid("libc:malloc%return\t\tret:x  ",
                  spec("libc:malloc%return", target: "libc", .symbol("malloc"), .return,
                       fields: [FieldSpec(name: "ret", source: .ret, type: .hex)])),
        ])
    }

    // MARK: - Errors

    private struct Invalid {
        let text: String
        /// The offending piece; the message must contain it in single quotes.
        let piece: String
        /// Words of the message that tell which rule was broken.
        let about: String
        let line: UInt
        init(_ text: String, _ piece: String, _ about: String, line: UInt = #line) {
            self.text = text
            self.piece = piece
            self.about = about
            self.line = line
        }
    }

    private func check(_ cases: [Invalid]) {
        for c in cases {
            let what = "parsing \(String(reflecting: c.text))"
            do {
                let spec = try ProbeParser.parse(c.text)
                XCTFail("\(what) succeeded with \(spec)", line: c.line)
            } catch {
                XCTAssertEqual(error.code, .usage, what, line: c.line)
                XCTAssertEqual(error.exitStatus, 2, what, line: c.line)
                XCTAssertTrue(error.message.contains("'\(c.piece)'"),
                              "\(what): message \(String(reflecting: error.message)) does not quote '\(c.piece)'", line: c.line)
                XCTAssertTrue(error.message.contains(c.about),
                              "\(what): message \(String(reflecting: error.message)) does not say \(String(reflecting: c.about))", line: c.line)
            }
        }
    }

    func testEmptyProbe() {
        check([
            Invalid("", "", "empty probe"),
            Invalid(" \t ", " \t ", "empty probe"),
        ])
    }

    func testBadTargetOrLocation() {
        check([
            Invalid(":foo", ":foo", "empty target"),
            Invalid(":foo%return", ":foo%return", "empty target"),
            Invalid("libc:", "libc:", "missing function name"),
            Invalid("%return", "%return", "missing function name"),
            Invalid("libc:%return", "libc:%return", "missing function name"),
        ])
    }

    func testUnknownSuffix() {
        check([
            Invalid("foo%retrun", "%retrun", "unknown suffix"),
            Invalid("libc:malloc%entry", "%entry", "unknown suffix"),
            Invalid("foo%", "%", "unknown suffix"),
            Invalid("foo%returnx", "%returnx", "unknown suffix"),
            Invalid("foo%return%return", "%return%return", "unknown suffix"),
            Invalid("foo%retrun%return", "%retrun%return", "unknown suffix"),
        ])
    }

    func testBadOffset() {
        check([
            Invalid("foo+", "foo+", "not SYMBOL+OFFSET"),
            Invalid("foo+zz", "foo+zz", "not SYMBOL+OFFSET"),
            Invalid("libc:foo+zz", "foo+zz", "not SYMBOL+OFFSET"),
            Invalid("+4", "+4", "not SYMBOL+OFFSET"),
            Invalid("foo+0x", "foo+0x", "not SYMBOL+OFFSET"),
            Invalid("foo+0xg", "foo+0xg", "not SYMBOL+OFFSET"),
            Invalid("foo+1a", "foo+1a", "not SYMBOL+OFFSET"),
            Invalid("foo+-0", "foo+-0", "not SYMBOL+OFFSET"),
            Invalid("foo+0x-0", "foo+0x-0", "not SYMBOL+OFFSET"),
            Invalid("foo+18446744073709551616", "foo+18446744073709551616", "not SYMBOL+OFFSET"),
        ])
    }

    func testBadAddress() {
        check([
            Invalid("0xzz", "0xzz", "not a hex address"),
            Invalid("libc:0xzz", "0xzz", "not a hex address"),
            Invalid("0x", "0x", "not a hex address"),
            Invalid("0x+10", "0x+10", "not a hex address"),
            Invalid("0x-0", "0x-0", "not a hex address"),
            Invalid("0x10000000000000000", "0x10000000000000000", "not a hex address"),
        ])
    }

    func testOffsetOnReturnProbe() {
        check([
            Invalid("foo+4%return", "foo+4%return", "offset"),
            Invalid("libc:malloc+0x10%return", "libc:malloc+0x10%return", "offset"),
        ])
    }

    func testMalformedUSDTProbes() {
        check([
            Invalid("usdt:/usr/lib/libpython3.so:python", "usdt:/usr/lib/libpython3.so:python", "not usdt:TARGET:PROVIDER:NAME"),
            Invalid("usdt:libc::setjmp arg0", "usdt:libc::setjmp", "not usdt:TARGET:PROVIDER:NAME"),
            Invalid("usdt:libc:libc:setjmp arg12", "arg12", "unknown field source"),
        ])
    }

    func testBadFieldSource() {
        check([
            Invalid("foo arg6", "arg6", "unknown field source"),
            Invalid("foo argx", "argx", "unknown field source"),
            Invalid("foo arg", "arg", "unknown field source"),
            Invalid("foo arg01", "arg01", "unknown field source"),
            Invalid("foo arg-1", "arg-1", "unknown field source"),
            Invalid("foo ARG0", "ARG0", "unknown field source"),
            Invalid("foo size=arg6:u64", "arg6", "unknown field source"),
            Invalid("foo x=", "x=", "unknown field source"),
            Invalid("foo a=b=arg0", "b=arg0", "unknown field source"),
        ])
    }

    func testSourceNotAvailableForKind() {
        check([
            Invalid("foo ret", "ret", "only available on return probes"),
            Invalid("libc:malloc r=ret:x", "ret", "only available on return probes"),
            Invalid("foo%return arg0", "arg0", "not available on a return probe"),
            Invalid("libc:malloc%return size=arg5:u64", "arg5", "not available on a return probe"),
        ])
    }

    func testBadType() {
        check([
            Invalid("foo arg0:s128", "s128", "unknown type"),
            Invalid("foo arg0:", "", "unknown type"),
            Invalid("foo arg0:U64", "U64", "unknown type"),
            Invalid("foo arg0:string", "string", "unknown type"),
            Invalid("foo arg0:str[8", "str[8", "unknown type"),
            Invalid("foo arg0:str[0]", "0", "string length"),
            Invalid("foo arg0:str[256]", "256", "string length"),
            Invalid("foo arg0:str[abc]", "abc", "string length"),
            Invalid("foo arg0:str[]", "", "string length"),
            Invalid("foo arg0:str[-1]", "-1", "string length"),
            Invalid("foo arg0:str[+5]", "+5", "string length"),
            Invalid("foo arg0:str[18446744073709551616]", "18446744073709551616", "string length"),
        ])
    }

    func testBadFieldName() {
        check([
            Invalid("foo 1x=arg0", "1x", "not an identifier"),
            Invalid("foo =arg0", "", "not an identifier"),
            Invalid("foo a-b=arg0", "a-b", "not an identifier"),
            Invalid("foo a.b=arg0:x", "a.b", "not an identifier"),
        ])
    }

    func testDuplicateFieldNames() {
        check([
            Invalid("foo n=arg0 n=arg1", "n", "used twice"),
            Invalid("foo arg0 arg0:x", "arg0", "used twice"),
            Invalid("foo arg1 arg1=arg2", "arg1", "used twice"),
            Invalid("foo%return ret r=ret ret:x", "ret", "used twice"),
        ])
    }

    func testAtMostSixFields() {
        check([
            Invalid("foo a=arg0 b=arg1 c=arg2 d=arg3 e=arg4 f=arg5 g=arg0", "foo", "at most 6 fields"),
            Invalid("libc:free%return a=ret b=ret c=ret d=ret e=ret f=ret g=ret h=ret", "libc:free%return", "at most 6 fields"),
        ])
    }
}

final class USDTSpecTests: XCTestCase {
    func testArgumentSpecs() {
        XCTAssertEqual(USDTArgument.parse("-4@%edi"), USDTArgument(size: 4, isSigned: true, location: .register(.rdi)))
        XCTAssertEqual(USDTArgument.parse("8@%r12"), USDTArgument(size: 8, isSigned: false, location: .register(.r12)))
        XCTAssertEqual(USDTArgument.parse("-4@%r9d"), USDTArgument(size: 4, isSigned: true, location: .register(.r9)))
        XCTAssertEqual(USDTArgument.parse("-4@112(%rsp)"),
                       USDTArgument(size: 4, isSigned: true, location: .memory(base: .rsp, displacement: 112, size: 4)))
        XCTAssertEqual(USDTArgument.parse("8@-16(%rbp)"),
                       USDTArgument(size: 8, isSigned: false, location: .memory(base: .rbp, displacement: -16, size: 8)))
        XCTAssertEqual(USDTArgument.parse("2@(%rax)"),
                       USDTArgument(size: 2, isSigned: false, location: .memory(base: .rax, displacement: 0, size: 2)))
        XCTAssertEqual(USDTArgument.parse("4@$-5"), USDTArgument(size: 4, isSigned: false, location: .constant(-5)))
        for unreadable in ["8@foo(%rip)", "8@(%rax,%rbx,8)", "3@%eax", "8@%xmm0", "@%rax", "8@", "x@%rax"] {
            XCTAssertNil(USDTArgument.parse(Substring(unreadable)), unreadable)
        }
        XCTAssertEqual(USDTArgument.parse("-1@%al")?.fieldType, .s8)
        XCTAssertEqual(USDTArgument.parse("2@%ax")?.fieldType, .u16)
    }

    func testUSDTProbeGrammar() throws {
        let spec = try ProbeParser.parse("usdt:/usr/bin/python3.11:python:function__entry file=arg0:str line=arg11")
        XCTAssertEqual(spec.target, "/usr/bin/python3.11")
        XCTAssertEqual(spec.location, .usdt(provider: "python", name: "function__entry"))
        XCTAssertEqual(spec.fields.map(\.name), ["file", "line"])
        XCTAssertEqual(spec.fields.map(\.typeIsDefault), [false, true])
        for bad in ["usdt:a:b", "usdt::p:n", "usdt:a:b:c:d", "usdt:t:p:n x=arg12"] {
            XCTAssertThrowsError(try ProbeParser.parse(bad), bad)
        }
    }

    func testNopNop5SitesMoveToTheFiveByteNop() {
        XCTAssertTrue(ProbeResolver.startsWithNopAndNop5([0x90, 0x0F, 0x1F, 0x44, 0x00, 0x00]))
        XCTAssertFalse(ProbeResolver.startsWithNopAndNop5([0x90, 0x48, 0x89, 0xE5, 0x00, 0x00]))
        XCTAssertFalse(ProbeResolver.startsWithNopAndNop5(nil))
    }
}
