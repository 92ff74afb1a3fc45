import UtapCore
import UtapOutput
import XCTest

final class TextWriterTests: XCTestCase {
    private let start: UInt64 = 1_000_000_000
    private let header = "TIME(s)      COMM             PID/TID       PROBE                FIELDS\n"

    /// Events through a TextWriter over `[malloc, mallocReturn]` (probe column 20 wide),
    /// without the header line.
    private func lines(probes: [ProbeDescriptor] = [malloc, mallocReturn],
                       _ events: [Event]) throws -> [UInt8] {
        let out = try captured { out in
            let writer = TextWriter(probes: probes, output: out, startNs: start)
            for event in events { try writer.write(event) }
        }
        return Array(out.drop(while: { $0 != 0x0A }).dropFirst())
    }

    private func at(_ offsetNs: UInt64, probe: Int = 0, kind: ProbeKind = .entry,
                    _ fields: [FieldValue], latency: UInt64? = nil,
                    stack: [String]? = nil) -> Event {
        Event(timestampNs: start + offsetNs, pid: 4242, tid: 4243, comm: "app", probe: probe,
              kind: kind, fields: fields, latencyNs: latency, stack: stack)
    }

    func testHeaderAndColumnsAlignAcrossProbes() throws {
        let out = try captured { out in
            let writer = TextWriter(probes: [malloc, mallocReturn], output: out, startNs: start)
            try writer.write(at(1_234_567, [.unsigned(32)]))
            try writer.write(at(1_301_000, probe: 1, kind: .return, [.pointer(0x55d0c2a0)],
                                latency: 7100))
        }
        let expected = header
            + "    0.001234 app              4242/4243     libc:malloc          size=32\n"
            + "    0.001301 app              4242/4243     libc:malloc%return   "
            + "ret=0x55d0c2a0  latency=7.1us\n"
        assertBytes(out, expected)
        // Every column starts where its title does.
        let rows = String(decoding: out, as: UTF8.self).split(separator: "\n").map(Array.init)
        for title in ["COMM", "PID/TID", "PROBE", "FIELDS"] {
            let column = try XCTUnwrap(header.range(of: title)).lowerBound.utf16Offset(in: header)
            for row in rows.dropFirst() {
                XCTAssertNotEqual(row[column], " ", "\(title) column in \(String(row))")
                XCTAssertEqual(row[column - 1], " ", "\(title) column in \(String(row))")
            }
        }
    }

    func testHeaderComesOnceAndOnlyWithEvents() throws {
        let none = try captured { _ = TextWriter(probes: [malloc], output: $0, startNs: 0) }
        XCTAssertEqual(none, [])
        let two = try captured { out in
            let writer = TextWriter(probes: [malloc], output: out, startNs: start)
            try writer.write(at(0, [.unsigned(1)]))
            try writer.write(at(0, [.unsigned(2)]))
        }
        XCTAssertEqual(two.split(separator: 0x0A).filter { $0.starts(with: bytes("TIME")) }.count,
                       1)
    }

    func testEveryFieldKind() throws {
        let probe = ProbeDescriptor(
            name: "libc:f", kind: .entry,
            fieldNames: ["neg", "min", "max", "x", "p", "t", "f", "s", "cut", "empty", "bad"])
        let out = try lines(probes: [probe], [at(0, [
            .signed(-5), .signed(.min), .unsigned(.max), .hex(0xDEADBEEF), .pointer(0),
            .bool(true), .bool(false), .string(bytes("hi"), truncated: false),
            .string(bytes("abc"), truncated: true), .string([], truncated: false),
            .unreadable(address: 0x1234),
        ])])
        assertBytes(out, "    0.000000 app              4242/4243     libc:f   neg=-5  "
                    + "min=-9223372036854775808  max=18446744073709551615  x=0xdeadbeef  "
                    + #"p=0x0  t=true  f=false  s="hi"  cut="abc"...  empty=""  "#
                    + "bad=<unreadable 0x1234>\n")
    }

    func testStringsGetCLikeEscapes() throws {
        let value = bytes("a\"b\\c\n\té") + [0x01, 0x7F, 0xFF, 0xE6, 0x97]
        let out = try lines(probes: [malloc], [
            Event(timestampNs: start, pid: 1, tid: 1, comm: "bad\ncomm", probe: 0,
                  kind: .entry, fields: [.string(value, truncated: false)]),
        ])
        assertBytes(out, #"    0.000000 bad\ncomm        1/1           libc:malloc   "#
                    + #"size="a\"b\\c\n\té\x01\x7f\xff\xe6\x97""# + "\n")
    }

    func testLineWithoutFieldsHasNoTrailingSpaces() throws {
        let out = try lines([at(12_000_000_999, [])])
        assertBytes(out, "   12.000000 app              4242/4243     libc:malloc\n")
    }

    func testEventBeforeStartAndWideIDs() throws {
        let out = try lines([
            Event(timestampNs: start - 2_500, pid: 1, tid: 4_194_304, comm: "kworker/0:1",
                  probe: 0, kind: .entry, fields: [.unsigned(1)]),
            Event(timestampNs: start + 123_456_789_000_000, pid: 4_194_304, tid: 4_194_303,
                  comm: "app", probe: 0, kind: .entry, fields: [.unsigned(1)]),
        ])
        assertBytes(out, "   -0.000002 kworker/0:1      1/4194304     libc:malloc          size=1\n"
                    + "123456.789000 app              4194304/4194303 libc:malloc          "
                    + "size=1\n")
    }

    func testLatencyUnits() throws {
        let cases: [(UInt64, String)] = [
            (0, "0ns"), (999, "999ns"), (1000, "1.0us"), (7149, "7.1us"), (7150, "7.2us"),
            (999_949, "999.9us"), (999_950, "1.0ms"), (12_000_000, "12.0ms"),
            (3_500_000_000, "3.5s"), (4_000_000_000_000, "4000.0s"),
            (.max, "18446744073.7s"),
        ]
        for (ns, text) in cases {
            let out = try lines([at(0, probe: 1, kind: .return, [], latency: ns)])
            assertBytes(out, "    0.000000 app              4242/4243     libc:malloc%return   "
                        + "latency=\(text)\n")
        }
    }

    func testStackFramesFollowIndented() throws {
        let out = try lines([at(0, [.unsigned(8)], stack: ["0x401136 main+0x16 (/app)", "0x7f"])])
        assertBytes(out, "    0.000000 app              4242/4243     libc:malloc          size=8\n"
                    + "    0x401136 main+0x16 (/app)\n    0x7f\n")
    }

    func testLostAndSummaryGoToTheSummaryStream() throws {
        var summary: [UInt8] = []
        let events = try captured { out in
            summary = try captured { err in
                let free = ProbeDescriptor(name: "libc:free", kind: .entry, fieldNames: [])
                let writer = TextWriter(probes: [malloc, free, malloc], output: out,
                                        summaryOutput: err, startNs: start)
                try writer.write(at(0, [.unsigned(1)]))
                try writer.lost(probe: 0, count: 12)
                try writer.summary(TraceSummary(events: [1_500_000, 5, 500_000],
                                                lost: [0, 3, 12]))
            }
        }
        assertBytes(events, "TIME(s)      COMM             PID/TID       PROBE         FIELDS\n"
                    + "    0.000000 app              4242/4243     libc:malloc   size=1\n")
        assertBytes(summary, "utap: lost 12 events of libc:malloc\n"
                    + "utap: 2000005 events, 15 lost\n"
                    + "  libc:malloc  events=2000000 lost=12\n"
                    + "  libc:free    events=5       lost=3\n")
    }

    func testLostGoesToTheMainStreamWithoutASummaryStream() throws {
        let out = try captured { out in
            let writer = TextWriter(probes: [malloc], output: out, startNs: 0)
            try writer.lost(probe: 0, count: 1)
            try writer.summary(TraceSummary(events: [0], lost: [1]))
        }
        assertBytes(out, "utap: lost 1 events of libc:malloc\nutap: 0 events, 1 lost\n"
                    + "  libc:malloc  events=0 lost=1\n")
    }
}
