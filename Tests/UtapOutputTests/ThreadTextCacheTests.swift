import UtapCore
import UtapOutput
import XCTest

/// Writers keep each thread's encoded pid/tid/comm: the output must be what a writer
/// that has seen no event before writes, event for event.
final class ThreadTextCacheTests: XCTestCase {
    /// Threads that share a cache slot (tids 64 apart; tid 108 and tid 101's second probe),
    /// a thread renamed, a tid reused by another process, a name whose escaped form does
    /// not fit a slot, one thread alternating between two probes, a probe whose name does
    /// not fit a slot, and back again; names longer than a kernel's, alike in their first
    /// 16 bytes.
    private let events: [Event] = {
        let threads: [(pid: Int32, tid: Int32, comm: String, probe: Int)] = [
            (100, 101, "worker", 0), (100, 165, "worker-2", 0), (100, 101, "worker", 0), (100, 165, "worker-2", 0),
            (100, 101, "worker", 1), (100, 101, "worker", 0), (100, 101, "worker", 1), (100, 108, "other", 0),
            (100, 101, "worker", 1), (100, 101, "worker", 2), (100, 101, "worker", 2), (100, 101, "worker", 0),
            (100, 101, "renamed", 0), (200, 101, "renamed", 0), (200, 101, "quote\"back\\slash", 0),
            (300, 301, String(repeating: "\u{1}", count: 40), 0), (300, 301, String(repeating: "\u{1}", count: 40), 0),
            (100, 101, "worker", 0), (7, 7, "", 0), (7, 7, "", 0),
            // 16 bytes, the most a name key holds; then two names that share those 16
            (400, 401, "sixteen-bytes-ab", 0), (400, 401, "sixteen-bytes-ab", 0),
            (400, 401, "sixteen-bytes-abX", 0), (400, 401, "sixteen-bytes-abY", 0),
        ]
        return threads.enumerated().map { index, thread in
            Event(timestampNs: 1_000_000_000 + UInt64(index) * 1000, pid: thread.pid, tid: thread.tid,
                  comm: thread.comm, probe: thread.probe, kind: .entry, fields: [.unsigned(UInt64(index))])
        }
    }()

    private let probes = [malloc, mallocReturn,
                          ProbeDescriptor(name: "/opt/" + String(repeating: "long/", count: 60) + "app:f", kind: .entry,
                                          fieldNames: ["x"])]

    func testJSONIsTheSameAsWithoutTheCache() throws {
        try assertSameAsFreshWriters { out in JSONWriter(probes: probes, output: out) }
    }

    func testTextIsTheSameAsWithoutTheCache() throws {
        try assertSameAsFreshWriters { out in TextWriter(probes: probes, output: out, startNs: 1_000_000_000) }
    }

    /// All events through one writer, against each event through a writer of its own
    /// (text: the header line dropped from every one but the first).
    private func assertSameAsFreshWriters(_ makeWriter: (OutputBuffer) -> EventWriter,
                                          file: StaticString = #filePath, line: UInt = #line) throws {
        let together = try captured { out in
            let writer = makeWriter(out)
            for event in events { try writer.write(event) }
        }
        var apart: [UInt8] = []
        for (index, event) in events.enumerated() {
            let alone = try captured { out in try makeWriter(out).write(event) }
            let isText = alone.first == UInt8(ascii: "T")
            apart += index > 0 && isText ? Array(alone.drop(while: { $0 != 0x0A }).dropFirst()) : alone
        }
        assertBytes(together, String(decoding: apart, as: UTF8.self), file: file, line: line)
    }
}
