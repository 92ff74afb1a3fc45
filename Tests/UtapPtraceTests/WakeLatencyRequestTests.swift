import Foundation
import Glibc
@testable import UtapPtrace
import XCTest

/// WakeLatencyRequest against a plain file standing in for /dev/cpu_dma_latency: what it
/// writes, and when (no privileges needed).
final class WakeLatencyRequestTests: XCTestCase {
    private func written(_ path: String) throws -> [Int32] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return stride(from: 0, to: data.count, by: 4).map { offset in
            data[offset..<offset + 4].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        }
    }

    func testHoldWritesZeroOnceAndReleaseWritesNoConstraint() throws {
        let path = NSTemporaryDirectory() + "utap-wake-\(getpid())"
        FileManager.default.createFile(atPath: path, contents: nil)
        defer { unlink(path) }
        let request = WakeLatencyRequest(path: path)
        XCTAssertTrue(request.isAvailable)
        request.release()
        XCTAssertEqual(try written(path), [], "nothing to release before a hold")
        request.hold()
        request.hold()
        XCTAssertTrue(request.isHeld)
        XCTAssertEqual(try written(path), [0], "a second hold writes nothing")
        request.release()
        request.release()
        XCTAssertFalse(request.isHeld)
        XCTAssertEqual(try written(path), [0, WakeLatencyRequest.noConstraint])
    }

    func testWithoutTheDeviceNothingIsHeld() {
        let request = WakeLatencyRequest(path: "/nonexistent/cpu_dma_latency")
        XCTAssertFalse(request.isAvailable)
        request.hold()
        XCTAssertFalse(request.isHeld)
    }
}
