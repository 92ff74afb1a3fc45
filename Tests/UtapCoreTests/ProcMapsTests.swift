import Glibc
import XCTest
@testable import UtapCore

final class ProcMapsTests: XCTestCase {
    func testParsesEveryKindOfLine() {
        let text = """
            55d0c2a00000-55d0c2a21000 r-xp 00002000 fd:01 1049443                    /usr/bin/my app
            7f1c3a000000-7f1c3a021000 r--p 00000000 08:02 77                         /tmp/libgone.so (deleted)
            55d0c3a00000-55d0c3a21000 rw-p 00000000 00:00 0                          [heap]
            7f1c3b000000-7f1c3b004000 rw-p 00000000 00:00 0 
            7ffd1c5f0000-7ffd1c5f2000 r-xp 00000000 00:00 0                          [vdso]
            not a maps line
            """
        XCTAssertEqual(ProcMaps.parse(text), [
            MapEntry(start: 0x55d0c2a00000, end: 0x55d0c2a21000, offset: 0x2000, perms: "r-xp",
                     device: "fd:01", inode: 1049443, path: "/usr/bin/my app"),
            MapEntry(start: 0x7f1c3a000000, end: 0x7f1c3a021000, offset: 0, perms: "r--p",
                     device: "08:02", inode: 77, path: "/tmp/libgone.so", isDeleted: true),
            MapEntry(start: 0x55d0c3a00000, end: 0x55d0c3a21000, offset: 0, perms: "rw-p",
                     device: "00:00", inode: 0, path: "[heap]"),
            MapEntry(start: 0x7f1c3b000000, end: 0x7f1c3b004000, offset: 0, perms: "rw-p",
                     device: "00:00", inode: 0, path: ""),
            MapEntry(start: 0x7ffd1c5f0000, end: 0x7ffd1c5f2000, offset: 0, perms: "r-xp",
                     device: "00:00", inode: 0, path: "[vdso]"),
        ])
        let entries = ProcMaps.parse(text)
        XCTAssertEqual(entries.map(\.isFile), [true, true, false, false, false])
        XCTAssertEqual(entries.map(\.isExecutable), [true, false, false, false, true])
    }

    func testReadsOwnMaps() throws {
        let entries = try ProcMaps.read(pid: getpid())
        let libc = entries.filter { $0.path.hasSuffix("/libc.so.6") }
        XCTAssertTrue(libc.contains { $0.isExecutable && $0.isFile && !$0.isDeleted })
        // Each entry's inode is the one stat reports for its path.
        var info = stat()
        let first = try XCTUnwrap(libc.first)
        XCTAssertEqual(stat(first.path, &info), 0)
        XCTAssertEqual(first.inode, UInt64(info.st_ino))
    }

    func testUnknownPidIsRuntimeError() {
        XCTAssertThrowsUtapError(try ProcMaps.read(pid: Int32.max), .runtime("pid \(Int32.max): no such process"))
    }
}
