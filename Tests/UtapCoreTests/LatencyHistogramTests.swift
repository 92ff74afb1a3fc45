import XCTest
@testable import UtapCore

final class LatencyHistogramTests: XCTestCase {
    func testBucketsAreLogLinearAndMatchTheirLowerBounds() {
        XCTAssertEqual((0..<8).map { LatencyHistogram.bucket(of: $0) }, [0, 1, 2, 3, 4, 5, 6, 7])
        XCTAssertEqual([8, 9, 10, 12, 14, 15, 16].map { LatencyHistogram.bucket(of: $0) }, [8, 8, 9, 10, 11, 11, 12])
        XCTAssertEqual(LatencyHistogram.bucket(of: UInt64.max), LatencyHistogram.usedBuckets - 1)
        XCTAssertEqual(LatencyHistogram.usedBuckets, 252)
        // Every bucket's lower bound falls in that bucket, and one less falls in the one before.
        for index in 1..<LatencyHistogram.usedBuckets {
            let lower = LatencyHistogram.lowerBound(index)
            XCTAssertEqual(LatencyHistogram.bucket(of: lower), index)
            XCTAssertEqual(LatencyHistogram.bucket(of: lower - 1), index - 1)
        }
    }

    func testQuantilesAreBucketTopsCappedByTheMaximum() {
        var h = LatencyHistogram()
        for ns: UInt64 in [100, 100, 100, 100, 100, 100, 100, 100, 100, 5000] {
            h.buckets[LatencyHistogram.bucket(of: ns)] += 1
            h.count += 1
            h.sumNs += ns
            h.maxNs = max(h.maxNs, ns)
        }
        // 100 is in [96, 112): its bucket's top is 111.
        XCTAssertEqual(h.quantile(0.5), 111)
        XCTAssertEqual(h.quantile(0.9), 111)
        XCTAssertEqual(h.quantile(0.99), 5000, "capped by the exact maximum")
        XCTAssertEqual(h.powerOfTwoRows.map(\.lower), [64, 128, 256, 512, 1024, 2048, 4096])
        XCTAssertEqual(h.powerOfTwoRows.map(\.count), [9, 0, 0, 0, 0, 0, 1])
        XCTAssertEqual(LatencyHistogram().quantile(0.5), 0)
    }

    func testSinceSubtractsAnEarlierSnapshot() {
        var early = LatencyHistogram()
        early.buckets[10] = 2
        early.count = 2
        early.sumNs = 20
        var late = early
        late.buckets[10] = 5
        late.buckets[11] = 1
        late.count = 6
        late.sumNs = 70
        let d = late.since(early)
        XCTAssertEqual(d.count, 4)
        XCTAssertEqual(d.sumNs, 50)
        XCTAssertEqual(d.buckets[10], 3)
        XCTAssertEqual(d.buckets[11], 1)
    }
}
