import XCTest
@testable import UtapBPF

/// RingSet's merge of per-CPU rings, on rings laid out in ordinary memory the way the
/// kernel lays them out (a record is written at its position and at position + size, as
/// the kernel's double mapping shows it).
final class RingSetTests: XCTestCase {
    /// One fake ring: producer side written by the test.
    final class FakeRing {
        let size: Int
        let consumer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        let producer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        let data: UnsafeMutableRawPointer
        private(set) var reserved: UInt64 = 0

        init(size: Int = 256, start: UInt64 = 0) {
            self.size = size
            data = .allocate(byteCount: 2 * size, alignment: 8)
            data.initializeMemory(as: UInt8.self, repeating: 0xAA, count: 2 * size)
            consumer.storeBytes(of: start, as: UInt64.self)
            producer.storeBytes(of: start, as: UInt64.self)
            reserved = start
        }

        deinit {
            consumer.deallocate()
            producer.deallocate()
            data.deallocate()
        }

        var ring: RingSet.Ring {
            RingSet.Ring(consumerPosition: consumer, producerPosition: producer, data: data, size: size)
        }

        var consumed: UInt64 { consumer.load(as: UInt64.self) }

        /// Reserves and writes a record (timestamp, then `tag`) at the producer position;
        /// `busy`/`discarded` set those header bits. Returns its position.
        @discardableResult
        func write(timestamp: UInt64, tag: UInt64, busy: Bool = false, discarded: Bool = false) -> UInt64 {
            let position = reserved
            var length: UInt32 = 16
            if busy { length |= RingSet.busyBit }
            if discarded { length |= RingSet.discardBit }
            put(length, at: position)
            put(UInt32(0), at: position + 4)
            put(timestamp, at: position + 8)
            put(tag, at: position + 16)
            reserved += 24
            producer.storeBytes(of: reserved, as: UInt64.self)
            return position
        }

        /// Reserves and writes one record holding `events` back to back, each a utap event
        /// of `eventSize` bytes (timestamp, then tag, its size at offset 28), then
        /// `padding` bytes, as the BPF side sends a CPU's staged events.
        func writeBatch(_ events: [(timestamp: UInt64, tag: UInt64)], eventSize: Int = 56, padding: Int = 0) {
            let position = reserved
            let length = events.count * eventSize + padding
            put(UInt32(length), at: position)
            put(UInt32(0), at: position + 4)
            for (i, event) in events.enumerated() {
                let start = position + 8 + UInt64(i * eventSize)
                for word in stride(from: 0, to: eventSize, by: 8) { put(UInt64(0), at: start + UInt64(word)) }
                put(event.timestamp, at: start)
                put(event.tag, at: start + 8)
                put(UInt16(eventSize), at: start + 28)
            }
            reserved += (UInt64(length) + 8 + 7) & ~7
            producer.storeBytes(of: reserved, as: UInt64.self)
        }

        func complete(at position: UInt64) {
            put(UInt32(16), at: position)
        }

        /// Writes at both views of the double mapping.
        private func put<T>(_ value: T, at position: UInt64) {
            let offset = Int(position & UInt64(size - 1))
            withUnsafeBytes(of: value) { bytes in
                for (i, byte) in bytes.enumerated() {
                    data.storeBytes(of: byte, toByteOffset: (offset + i) % size, as: UInt8.self)
                    data.storeBytes(of: byte, toByteOffset: (offset + i) % size + size, as: UInt8.self)
                }
            }
        }
    }

    private func tags(_ set: RingSet, before watermark: UInt64 = .max, limit: Int = .max) -> [UInt64] {
        var seen: [UInt64] = []
        _ = set.read(before: watermark, limit: limit) { record in
            XCTAssertEqual(record.count, 16)
            seen.append(record.load(fromByteOffset: 8, as: UInt64.self))
            return true
        }
        return seen
    }

    func testRecordsOfTwoRingsComeOutByTimestamp() {
        let a = FakeRing(), b = FakeRing()
        a.write(timestamp: 10, tag: 1)
        a.write(timestamp: 40, tag: 4)
        b.write(timestamp: 20, tag: 2)
        b.write(timestamp: 30, tag: 3)
        b.write(timestamp: 50, tag: 5)
        let set = RingSet(rings: [a.ring, b.ring])
        XCTAssertEqual(tags(set), [1, 2, 3, 4, 5])
        XCTAssertEqual(a.consumed, 48)
        XCTAssertEqual(b.consumed, 72)
        XCTAssertEqual(tags(set), [])
    }

    func testRecordsStampedAtOrAfterTheWatermarkWaitForTheNextRead() {
        let a = FakeRing(), b = FakeRing()
        a.write(timestamp: 10, tag: 1)
        a.write(timestamp: 100, tag: 3)
        b.write(timestamp: 99, tag: 2)
        let set = RingSet(rings: [a.ring, b.ring])
        XCTAssertEqual(tags(set, before: 100), [1, 2])
        XCTAssertEqual(a.consumed, 24, "the held record stays in the ring")
        XCTAssertEqual(tags(set, before: 101), [3])
    }

    func testARecordStillBeingWrittenEndsTheRead() {
        let a = FakeRing(), b = FakeRing()
        a.write(timestamp: 10, tag: 1)
        let busy = a.write(timestamp: 20, tag: 2, busy: true)
        a.write(timestamp: 30, tag: 4)
        b.write(timestamp: 25, tag: 3)
        b.write(timestamp: 35, tag: 5)
        let set = RingSet(rings: [a.ring, b.ring])
        XCTAssertEqual(tags(set), [1])
        XCTAssertEqual(tags(set), [])
        a.complete(at: busy)
        XCTAssertEqual(tags(set), [2, 3, 4, 5])
    }

    /// A thread's record (X) can sit behind another thread's unfinished one in one ring
    /// while its next record (Y) is complete in another: Y must wait for X.
    func testARecordBehindAnUnfinishedOneIsNotOvertakenByItsThreadsNextRecord() {
        let a = FakeRing(), b = FakeRing()
        let busy = a.write(timestamp: 10, tag: 1, busy: true)
        a.write(timestamp: 20, tag: 2) // X
        b.write(timestamp: 30, tag: 3) // Y, the same thread's next record, on another CPU
        let set = RingSet(rings: [a.ring, b.ring])
        XCTAssertEqual(tags(set), [])
        a.complete(at: busy)
        XCTAssertEqual(tags(set), [1, 2, 3])
    }

    func testDiscardedRecordsAreSkipped() {
        let a = FakeRing()
        a.write(timestamp: 1, tag: 1)
        a.write(timestamp: 2, tag: 2, discarded: true)
        a.write(timestamp: 3, tag: 3)
        let set = RingSet(rings: [a.ring])
        XCTAssertEqual(tags(set), [1, 3])
        XCTAssertEqual(a.consumed, 72)
    }

    func testRecordsThatWrapAroundTheEndReadWhole() {
        // 256 bytes of data, positions from 240: the second record spans the end.
        let a = FakeRing(size: 256, start: 240)
        var expected: [UInt64] = []
        let set = RingSet(rings: [a.ring])
        for round in 0..<40 {
            for k in 0..<5 {
                let tag = UInt64(round * 5 + k)
                a.write(timestamp: tag, tag: tag)
                expected.append(tag)
            }
            XCTAssertEqual(tags(set), Array(expected.suffix(5)))
        }
        XCTAssertEqual(a.consumed, 240 + 200 * 24)
    }

    func testALimitedReadConsumesOnlyWhatItHandsOver() {
        let a = FakeRing(), b = FakeRing()
        for t in 0..<4 { a.write(timestamp: UInt64(2 * t), tag: UInt64(2 * t)) }
        for t in 0..<4 { b.write(timestamp: UInt64(2 * t + 1), tag: UInt64(2 * t + 1)) }
        let set = RingSet(rings: [a.ring, b.ring])
        XCTAssertEqual(tags(set, limit: 3), [0, 1, 2])
        var stoppedAt: [UInt64] = []
        _ = set.read(before: .max, limit: .max) { record in
            stoppedAt.append(record.load(fromByteOffset: 8, as: UInt64.self))
            return false
        }
        XCTAssertEqual(stoppedAt, [3], "a record the body refuses is still consumed, and ends the read")
        XCTAssertEqual(tags(set), [4, 5, 6, 7])
    }

    /// Tags and sizes of the events a read hands over.
    private func events(_ set: RingSet, limit: Int = .max) -> [(tag: UInt64, size: Int)] {
        var seen: [(tag: UInt64, size: Int)] = []
        _ = set.read(before: .max, limit: limit) { event in
            seen.append((event.load(fromByteOffset: 8, as: UInt64.self), event.count))
            return true
        }
        return seen
    }

    func testTheEventsOfOneRecordComeOutOneByOneMergedByTimestamp() {
        let a = FakeRing(size: 1024), b = FakeRing(size: 1024)
        a.writeBatch([(10, 1), (30, 3), (50, 5)])
        b.write(timestamp: 20, tag: 2)
        b.write(timestamp: 40, tag: 4)
        let set = RingSet(rings: [a.ring, b.ring])
        let seen = events(set)
        XCTAssertEqual(seen.map(\.tag), [1, 2, 3, 4, 5])
        XCTAssertEqual(seen.map(\.size), [56, 16, 56, 16, 56])
        XCTAssertEqual(a.consumed, 8 + 3 * 56)
    }

    func testAReadEndingInsideARecordResumesAtItsNextEvent() {
        let a = FakeRing(size: 1024)
        a.writeBatch([(1, 1), (2, 2), (3, 3)])
        a.writeBatch([(4, 4)])
        let set = RingSet(rings: [a.ring])
        XCTAssertEqual(events(set, limit: 2).map(\.tag), [1, 2])
        XCTAssertEqual(a.consumed, 0, "a record is consumed once its last event is handed over")
        XCTAssertEqual(events(set).map(\.tag), [3, 4])
        XCTAssertEqual(a.consumed, 2 * 8 + 4 * 56)
        XCTAssertEqual(events(set).map(\.tag), [])
    }

    /// A record reserved for more fields than its probe has (the BPF side rounds the size
    /// up) ends in padding shorter than an event: not an event.
    func testPaddingAfterTheLastEventIsSkipped() {
        let a = FakeRing(size: 1024)
        a.writeBatch([(1, 1)], padding: 8)
        a.writeBatch([(2, 2), (3, 3)], padding: 40)
        let set = RingSet(rings: [a.ring])
        let seen = events(set)
        XCTAssertEqual(seen.map(\.tag), [1, 2, 3])
        XCTAssertEqual(seen.map(\.size), [56, 56, 56])
        XCTAssertEqual(a.consumed, 8 + 64 + 8 + 152)
    }

    func testRingSizesArePowersOfTwoSharingTheTotal() {
        let page = RingSet.pageSize
        XCTAssertEqual(RingSet.ringBytes(totalBytes: 32 << 20, rings: 2), 16 << 20)
        XCTAssertEqual(RingSet.ringBytes(totalBytes: 32 << 20, rings: 3), 8 << 20)
        XCTAssertEqual(RingSet.ringBytes(totalBytes: 32 << 20, rings: 1), 32 << 20)
        XCTAssertEqual(RingSet.ringBytes(totalBytes: 1 << 16, rings: 64), page)
    }

    func testCPUListsParse() {
        XCTAssertEqual(RingSet.cpus(inList: "0"), [0])
        XCTAssertEqual(RingSet.cpus(inList: "0-1"), [0, 1])
        XCTAssertEqual(RingSet.cpus(inList: "0-2,5,7-8"), [0, 1, 2, 5, 7, 8])
        for bad in ["", "a", "1-", "-1", "3-1", "0,,1", "0-1-2", "99999999"] {
            XCTAssertNil(RingSet.cpus(inList: bad), bad)
        }
    }
}
