import Foundation
import UtapCore
import UtapOutput
import XCTest

final class JSONWriterTests: XCTestCase {
    private func json(_ probes: [ProbeDescriptor],
                      _ body: (JSONWriter) throws -> Void) throws -> [UInt8] {
        try captured { try body(JSONWriter(probes: probes, output: $0)) }
    }

    func testEntryEventMatchesTheDesignExample() throws {
        let out = try json([malloc]) { try $0.write(event(fields: [.unsigned(32)])) }
        assertBytes(out, #"{"type":"event","ts_ns":123,"pid":42,"tid":43,"comm":"app","#
                    + #""probe":"libc:malloc","kind":"entry","fields":{"size":32}}"# + "\n")
    }

    func testReturnEventPutsLatencyThenStackLast() throws {
        let stack = ["0x401136 main+0x16 (/usr/bin/app)", "0x7f00 __libc_start_main+0x80"]
        let out = try json([malloc, mallocReturn]) {
            try $0.write(event(probe: 1, kind: .return, ts: 130, fields: [.pointer(0x55d0c2a0)],
                               latency: 7))
            try $0.write(event(probe: 1, kind: .return, ts: 131, fields: [.pointer(0)],
                               latency: 9, stack: stack))
            try $0.write(event(probe: 1, kind: .return, ts: 132, fields: [], stack: []))
        }
        let prefix = #"{"type":"event","ts_ns":13"#
        let middle = #","pid":42,"tid":43,"comm":"app","probe":"libc:malloc%return","#
            + #""kind":"return","fields":{"#
        assertBytes(out, prefix + "0" + middle + #""ret":"0x55d0c2a0"},"latency_ns":7}"# + "\n"
                    + prefix + "1" + middle + #""ret":"0x0"},"latency_ns":9,"#
                    + #""stack":["0x401136 main+0x16 (/usr/bin/app)","#
                    + #""0x7f00 __libc_start_main+0x80"]}"# + "\n"
                    + prefix + "2" + middle + #"},"stack":[]}"# + "\n")
    }

    func testEveryFieldKind() throws {
        let probe = ProbeDescriptor(
            name: "/opt/app:f", kind: .entry,
            fieldNames: ["neg", "min", "max", "x", "p", "t", "f", "s", "cut", "empty", "bad"])
        let out = try json([probe]) {
            try $0.write(event(fields: [
                .signed(-5), .signed(.min), .unsigned(.max), .hex(0xDEADBEEF), .pointer(.max),
                .bool(true), .bool(false), .string(bytes("hi"), truncated: false),
                .string(bytes("abcdef"), truncated: true), .string([], truncated: false),
                .unreadable(address: 0x1234),
            ]))
        }
        assertBytes(out, #"{"type":"event","ts_ns":123,"pid":42,"tid":43,"comm":"app","#
                    + #""probe":"/opt/app:f","kind":"entry","fields":{"neg":-5,"#
                    + #""min":-9223372036854775808,"max":18446744073709551615,"#
                    + #""x":"0xdeadbeef","p":"0xffffffffffffffff","t":true,"f":false,"#
                    + #""s":"hi","cut":"abcdef","empty":"","bad":null}}"# + "\n")
    }

    func testStringsAreEscapedAndNeverDropBytes() throws {
        let probe = ProbeDescriptor(name: "a\"b", kind: .entry, fieldNames: ["p\\q"])
        let value: [UInt8] = bytes("é\"\\\n日本") + [0x01, 0xFF, 0xFE, 0xE6, 0x97]
        let out = try json([probe]) {
            try $0.write(Event(timestampNs: 1, pid: -1, tid: 0, comm: "we\tird", probe: 0,
                               kind: .entry, fields: [.string(value, truncated: false)]))
        }
        assertBytes(out, #"{"type":"event","ts_ns":1,"pid":-1,"tid":0,"comm":"we\tird","#
                    + #""probe":"a\"b","kind":"entry","fields":{"p\\q":"#
                    + #""é\"\\\n日本\u0001\u00ff\u00fe\u00e6\u0097"}}"# + "\n")
    }

    func testLostAndSummaryRecords() throws {
        let free = ProbeDescriptor(name: "libc:free", kind: .entry, fieldNames: [])
        let out = try json([malloc, free, malloc]) {
            try $0.lost(probe: 0, count: 12)
            try $0.summary(TraceSummary(events: [1_500_000, 5, 500_000], lost: [0, 3, 4]))
        }
        assertBytes(out, #"{"type":"lost","probe":"libc:malloc","count":12}"# + "\n"
                    + #"{"type":"summary","events":2000005,"lost":7,"probes":{"#
                    + #""libc:malloc":{"events":2000000,"lost":4},"#
                    + #""libc:free":{"events":5,"lost":3}}}"# + "\n")
    }

    func testEmptySummary() throws {
        let out = try json([]) { try $0.summary(TraceSummary(events: [], lost: [])) }
        assertBytes(out, #"{"type":"summary","events":0,"lost":0,"probes":{}}"# + "\n")
    }

    /// Engine bugs show in the output instead of crashing a tracer with breakpoints set.
    func testUnknownProbeAndUnnamedFieldsDegrade() throws {
        let out = try json([malloc]) {
            try $0.write(event(probe: 7, fields: [.signed(1)]))
            try $0.write(event(fields: [.signed(1), .signed(2)]))
            try $0.lost(probe: 9, count: 1)
        }
        let head = #"{"type":"event","ts_ns":123,"pid":42,"tid":43,"comm":"app","#
        assertBytes(out, head + #""probe":"probe#7","kind":"entry","fields":{"field0":1}}"# + "\n"
                    + head + #""probe":"libc:malloc","kind":"entry","#
                    + #""fields":{"size":1,"field1":2}}"# + "\n"
                    + #"{"type":"lost","probe":"probe#9","count":1}"# + "\n")
    }

    func testOutputParsesBack() throws {
        let probe = ProbeDescriptor(name: "libc:open", kind: .entry,
                                    fieldNames: ["path", "flags", "fd", "ok", "bad"])
        let out = try json([probe]) {
            try $0.write(event(fields: [
                .string(bytes("/tmp/\"x\"\n") + [0xFF, 0xC3, 0xA9], truncated: true),
                .hex(0x80000), .signed(-3), .bool(true), .unreadable(address: 0),
            ], latency: 5, stack: ["0x1 f"]))
            try $0.lost(probe: 0, count: 2)
            try $0.summary(TraceSummary(events: [1], lost: [2]))
        }
        let lines = out.split(separator: 0x0A)
        XCTAssertEqual(lines.count, 3)
        let objects = try lines.map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0)) as? [String: Any])
        }
        XCTAssertEqual(objects[0]["type"] as? String, "event")
        XCTAssertEqual(objects[0]["ts_ns"] as? Int, 123)
        XCTAssertEqual(objects[0]["latency_ns"] as? Int, 5)
        XCTAssertEqual(objects[0]["stack"] as? [String], ["0x1 f"])
        let fields = try XCTUnwrap(objects[0]["fields"] as? [String: Any])
        XCTAssertEqual(fields["path"] as? String, "/tmp/\"x\"\n\u{FF}é")
        XCTAssertEqual(fields["flags"] as? String, "0x80000")
        XCTAssertEqual(fields["fd"] as? Int, -3)
        XCTAssertEqual(fields["ok"] as? Bool, true)
        XCTAssert(fields["bad"] is NSNull)
        XCTAssertEqual(objects[1]["count"] as? Int, 2)
        let probes = try XCTUnwrap(objects[2]["probes"] as? [String: [String: Int]])
        XCTAssertEqual(probes, ["libc:open": ["events": 1, "lost": 2]])
    }
}
