import UtapCore
import XCTest

/// A thread's name as the kernel records it, and as text.
final class ThreadNameTests: XCTestCase {
    private func name(_ bytes: [UInt8]) -> ThreadName {
        (bytes + [UInt8](repeating: 0, count: 16 - bytes.count)).withUnsafeBytes { ThreadName(bytes: $0.baseAddress!) }
    }

    func testTheKernelsBytesReadUpToTheFirstNUL() {
        XCTAssertEqual(name(Array("loop".utf8)).string, "loop")
        XCTAssertEqual(name([]).string, "")
        XCTAssertEqual(name(Array("fifteen-bytes-x".utf8)).string, "fifteen-bytes-x")
        XCTAssertEqual(name(Array("sixteen-bytes-xy".utf8)).string, "sixteen-bytes-xy")
        // bytes after a NUL are not part of the name (a shorter name written over a longer one)
        XCTAssertEqual(name(Array("ab".utf8) + [0] + Array("stale".utf8)).string, "ab")
    }

    func testBytesThatAreNotUTF8BecomeReplacementCharacters() {
        XCTAssertEqual(name([0x61, 0xff, 0x62]).string, "a\u{FFFD}b")
        XCTAssertEqual(name([0x61, 0xff, 0x62]).string,
                       String(decoding: [0x61, 0xff, 0x62] as [UInt8], as: UTF8.self))
    }

    func testATextIsANameOnlyWhenTheKernelCouldHaveGivenIt() {
        XCTAssertEqual(ThreadName(exactly: "loop"), name(Array("loop".utf8)))
        XCTAssertEqual(ThreadName(exactly: "wörker"), name(Array("wörker".utf8)))
        XCTAssertEqual(ThreadName(exactly: ""), name([]))
        XCTAssertEqual(ThreadName(exactly: "sixteen-bytes-xy"), name(Array("sixteen-bytes-xy".utf8)))
        XCTAssertNil(ThreadName(exactly: "seventeen-bytes-x"))
        XCTAssertNil(ThreadName(exactly: "a\u{0}b"))
        XCTAssertNotEqual(ThreadName(exactly: "worker-1"), ThreadName(exactly: "worker-2"))
    }
}
