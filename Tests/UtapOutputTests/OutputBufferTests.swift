import Foundation
import Glibc
import UtapCore
@testable import UtapOutput
import XCTest

final class OutputBufferTests: XCTestCase {
    func testDecimals() throws {
        let out = try captured { out in
            for value: Int64 in [0, 7, -1, 42, -9_876_543_210, .max, .min] {
                out.appendDecimal(value)
                out.append(0x20)
            }
            for value: UInt64 in [0, 9, 10, 99, 100, 101, 1_000_000, .max] {
                out.appendDecimal(value)
                out.append(0x20)
            }
            out.appendDecimal(UInt64(42), minDigits: 6)
            out.append(0x20)
            out.appendDecimal(UInt64(1234567), minDigits: 3)
        }
        assertBytes(out, "0 7 -1 42 -9876543210 9223372036854775807 -9223372036854775808 "
                    + "0 9 10 99 100 101 1000000 18446744073709551615 000042 1234567")
    }

    /// Every power of ten and its neighbours, and the 8-digit group boundaries, against
    /// the standard library's rendering, with and without zero padding.
    /// Timestamps keep the digits above their last six from the one before: a stream that
    /// crosses millisecond, power-of-ten and backwards steps reads as plain decimals.
    func testTimestampsReuseTheirHighDigitsOnlyWhenTheyMatch() throws {
        var values: [UInt64] = [0, 5, 999_999, 1_000_000, 1_000_001, 1_999_999, 2_000_000, 2_000_007,
                                29_388_155_387_157, 29_388_155_387_158, 29_388_156_000_001, 29_388_155_000_009,
                                9_999_999_999, 10_000_000_000, 10_000_000_001, 999_999, 1_000_042, .max, .max - 1]
        values += (0..<50).map { 1_700_000_000_000_000_000 + UInt64($0) * 333_333 }
        let timestamps = TimestampDecimals()
        let out = try captured { out in
            for value in values {
                timestamps.append(value, to: out)
                out.append(0x20)
            }
        }
        assertBytes(out, values.map { String($0) + " " }.joined())
    }

    /// Short pieces are copied by word moves; every length, short, long or in between,
    /// comes out byte for byte.
    func testShortPiecesOfEveryLength() throws {
        let source = (0..<40).map { UInt8(ascii: "a") + UInt8($0 % 26) }
        let out = try captured { out in
            source.withUnsafeBufferPointer { bytes in
                for length in 0...40 {
                    out.appendShort(UnsafeBufferPointer(rebasing: bytes[0..<length]))
                    out.append(0x7C)
                }
            }
        }
        assertBytes(out, (0...40).map { String(decoding: source[0..<$0], as: UTF8.self) + "|" }.joined())
    }

    func testDecimalsAtEveryDigitBoundary() throws {
        var values: [UInt64] = [0, 1, .max, .max - 1, 99_999_999, 100_000_000, 100_000_001,
                                9_999_999_999_999_999, 10_000_000_000_000_000, 1_000_000_000_000_000_001]
        var power: UInt64 = 1
        for _ in 0...19 {
            values += [power - 1, power, power + 1, power &* 5, power &* 7 &- 3]
            power = power.multipliedReportingOverflow(by: 10).partialValue
        }
        let out = try captured { out in
            for value in values {
                out.appendDecimal(value)
                out.append(0x20)
                out.appendDecimal(value, minDigits: 21)
                out.append(0x20)
            }
        }
        let expected = values.map { value -> String in
            let plain = String(value)
            return plain + " " + String(repeating: "0", count: 21 - plain.count) + plain + " "
        }.joined()
        assertBytes(out, expected)
    }

    func testHex() throws {
        let out = try captured { out in
            for value: UInt64 in [0, 0xa, 0x10, 0x55d0c2a0, 0xDEADBEEF, .max] {
                out.appendHex(value)
                out.append(0x20)
            }
        }
        assertBytes(out, "0x0 0xa 0x10 0x55d0c2a0 0xdeadbeef 0xffffffffffffffff ")
    }

    func testJSONStringEscaping() throws {
        let cases: [([UInt8], String)] = [
            ([], #""""#),
            (bytes("plain"), #""plain""#),
            (bytes("a\"b\\c"), #""a\"b\\c""#),
            ([0x0A, 0x09, 0x0D, 0x08, 0x0C], #""\n\t\r\b\f""#),
            ([0x00, 0x01, 0x1F, 0x7F], "\"\\u0000\\u0001\\u001f\u{7F}\""),
            (bytes("é 日本 😀"), "\"é 日本 😀\""),
            ([0x61, 0xFF, 0xFE, 0x62], #""a\u00ff\u00feb""#),
            // 日 is E6 97 A5: cut after two bytes, each byte is escaped on its own.
            ([0x78, 0xE6, 0x97], #""x\u00e6\u0097""#),
            // Overlong "/", a UTF-16 surrogate, a stray continuation, above U+10FFFF.
            ([0xC0, 0xAF, 0xED, 0xA0, 0x80, 0x80, 0xF4, 0x90, 0x80, 0x80],
             #""\u00c0\u00af\u00ed\u00a0\u0080\u0080\u00f4\u0090\u0080\u0080""#),
        ]
        for (input, expected) in cases {
            assertBytes(try captured { $0.appendJSONString(input) }, expected)
        }
    }

    func testTextEscaping() throws {
        let cases: [([UInt8], String)] = [
            ([], ""),
            (bytes("a\"b\\c"), #"a\"b\\c"#),
            ([0x0A, 0x09, 0x0D, 0x00, 0x1B, 0x7F], #"\n\t\r\x00\x1b\x7f"#),
            (bytes("é 日本"), "é 日本"),
            ([0xFF, 0xE6, 0x97], #"\xff\xe6\x97"#),
            // U+009B (CSI) is valid UTF-8 but a terminal control: escaped.
            ([0xC2, 0x9B, 0xC2, 0xA0], "\\xc2\\x9b\u{A0}"),
        ]
        for (input, expected) in cases {
            assertBytes(try captured { $0.appendTextEscaped(input) }, expected)
        }
    }

    func testFlushIfFullWaitsForThreshold() throws {
        let out = OutputBuffer(fd: temporaryFile(), ownsFD: true)
        out.append([UInt8](repeating: 0x61, count: 100))
        try out.flushIfFull()
        XCTAssertEqual(out.bufferedCount, 100)
        out.append([UInt8](repeating: 0x62, count: OutputBuffer.flushThreshold))
        try out.flushIfFull()
        XCTAssertEqual(out.bufferedCount, 0)
    }

    func testRecordLargerThanBufferGrows() throws {
        let big = [UInt8](repeating: 0x7A, count: 3 * OutputBuffer.flushThreshold + 5)
        let out = try captured { out in
            out.append(0x3C)
            out.append(big)
            out.append(0x3E)
        }
        XCTAssertEqual(out, [0x3C] + big + [0x3E])
    }

    func testBrokenPipeIsDistinctAndSticky() throws {
        signal(SIGPIPE, SIG_IGN)
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        close(fds[0])
        let out = OutputBuffer(fd: fds[1], ownsFD: true)
        let writer = JSONWriter(probes: [malloc], output: out)
        try writer.write(event(fields: [.unsigned(32)]))
        XCTAssertThrowsError(try writer.flush()) {
            XCTAssertEqual($0 as? OutputError, .brokenPipe)
        }
        XCTAssertGreaterThan(out.unwrittenBytes, 0)
        let lost = out.unwrittenBytes
        out.append(bytes("more"))
        XCTAssertThrowsError(try out.flush()) {
            XCTAssertEqual($0 as? OutputError, .brokenPipe)
        }
        XCTAssertEqual(out.unwrittenBytes, lost + 4)
    }

    func testOtherWriteErrorsCarryErrno() throws {
        let full = open("/dev/full", O_WRONLY)
        try XCTSkipIf(full < 0, "no /dev/full")
        let out = OutputBuffer(fd: full, ownsFD: true)
        out.append(bytes("x"))
        XCTAssertThrowsError(try out.flush()) { error in
            XCTAssertEqual(error as? OutputError, .writeFailed(errno: ENOSPC))
            XCTAssertEqual("\(error)", "write output: No space left on device")
        }
        XCTAssertEqual(out.unwrittenBytes, 1)
    }

    func testClosesOnlyAnOwnedFD() {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        do { _ = OutputBuffer(fd: fds[0], ownsFD: false) }
        XCTAssertNotEqual(fcntl(fds[0], F_GETFD), -1)
        do { _ = OutputBuffer(fd: fds[1], ownsFD: true) }
        XCTAssertEqual(fcntl(fds[1], F_GETFD), -1)
        close(fds[0])
    }

    /// More than a pipe holds, so the writer blocks, writes partially and flushes
    /// repeatedly while a reader drains the other end.
    func testManyEventsThroughAPipeArriveIntact() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        let reader = fds[0]
        final class Received: @unchecked Sendable { var bytes: [UInt8] = [] }
        let received = Received()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            received.bytes = readAll(reader)
            done.signal()
        }
        let count = 200_000
        var expected = ""
        do {
            let writer = JSONWriter(probes: [malloc, mallocReturn],
                                    output: OutputBuffer(fd: fds[1], ownsFD: true))
            for i in 0..<count {
                let ts = 1_000_000_000 + UInt64(i) * 17
                if i % 2 == 0 {
                    try writer.write(event(ts: ts, fields: [.unsigned(UInt64(i))]))
                    expected += #"{"type":"event","ts_ns":\#(ts),"pid":42,"tid":43,"comm":"app","#
                        + #""probe":"libc:malloc","kind":"entry","fields":{"size":\#(i)}}"# + "\n"
                } else {
                    let ret = 0x55d0_0000 + UInt64(i)
                    try writer.write(event(probe: 1, kind: .return, ts: ts,
                                           fields: [.pointer(ret)], latency: UInt64(i)))
                    expected += #"{"type":"event","ts_ns":\#(ts),"pid":42,"tid":43,"comm":"app","#
                        + #""probe":"libc:malloc%return","kind":"return","#
                        + #""fields":{"ret":"0x\#(String(ret, radix: 16))"},"latency_ns":\#(i)}"#
                        + "\n"
                }
            }
            try writer.flush()
        }  // the writer and its buffer go, closing the write end: the reader sees EOF
        done.wait()
        close(reader)
        XCTAssertEqual(received.bytes.count, expected.utf8.count)
        XCTAssert(received.bytes == Array(expected.utf8), "stream differs")
    }
}
