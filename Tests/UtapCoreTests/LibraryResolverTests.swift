import Foundation
import XCTest
@testable import UtapCore

final class LibraryResolverTests: XCTestCase {
    func testPathsAreReturnedAsGiven() throws {
        XCTAssertEqual(try LibraryResolver.resolve("/x/libfoo.so", pid: nil, executable: nil), "/x/libfoo.so")
        XCTAssertEqual(try LibraryResolver.resolve("./libfoo.so", pid: getpid(), executable: nil), "./libfoo.so")
    }

    func testRanks() {
        XCTAssertEqual(LibraryResolver.rank(of: "libc.so.6", for: "libc.so.6"), 0)
        XCTAssertEqual(LibraryResolver.rank(of: "libc.so", for: "libc"), 1)
        XCTAssertEqual(LibraryResolver.rank(of: "libc.so.6", for: "libc"), 2)
        XCTAssertEqual(LibraryResolver.rank(of: "libgtk-3.so.0", for: "libgtk"), 3)
        XCTAssertEqual(LibraryResolver.rank(of: "libz.so.1.2.13", for: "libz.so.1"), 2, "a SONAME, the file its link names")
        XCTAssertNil(LibraryResolver.rank(of: "libz.so.12", for: "libz.so.1"))
        XCTAssertNil(LibraryResolver.rank(of: "libcrypt.so.1", for: "libc"))
        XCTAssertNil(LibraryResolver.rank(of: "libc-notes.txt", for: "libc"))
    }

    func testMappedLibraryOfAProcess() throws {
        let pid = getpid()
        let mapped = try XCTUnwrap(try ProcMaps.read(pid: pid).first { $0.path.hasSuffix("/libc.so.6") }?.path)
        XCTAssertEqual(try LibraryResolver.resolve("libc", pid: pid, executable: nil), "/proc/\(pid)/root" + mapped)
        XCTAssertEqual(try LibraryResolver.resolve("libc.so.6", pid: pid, executable: nil), "/proc/\(pid)/root" + mapped)
    }

    func testUnmappedLibraryOfAProcess() {
        let pid = getpid()
        XCTAssertThrowsError(try LibraryResolver.resolve("libnotthere", pid: pid, executable: nil)) { error in
            let error = error as? UtapError
            XCTAssertEqual(error?.code, .usage, "a library the user named and the process lacks is a usage error, like an unknown file")
            XCTAssertEqual(error?.message, "library 'libnotthere': not mapped by pid \(pid), nor found where it would load it from")
            XCTAssertTrue(error?.hint?.hasPrefix("it maps ") == true)
            XCTAssertTrue(error?.hint?.contains("libc.so.6") == true)
        }
        // A name like one it maps comes first (a typo: the library it meant).
        XCTAssertThrowsError(try LibraryResolver.resolve("libxctes", pid: pid, executable: nil)) { error in
            XCTAssertTrue((error as? UtapError)?.hint?.hasPrefix("it maps libXCTest.so, ") == true, "\(error)")
        }
    }

    /// A library a running process has not loaded: the file it would load, found through
    /// its own LD_LIBRARY_PATH (not utap's), inside its root.
    func testLibraryAProcessHasNotLoadedYet() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        _ = try Toolchain.compile("int utap_later(void) { return 1; }\n", to: "libutaplater.so.2", in: directory,
                                  flags: ["-shared", "-fPIC"])
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["30"]
        sleeper.environment = ["LD_LIBRARY_PATH": "/nonexistent:" + directory]
        try sleeper.run()
        defer { sleeper.terminate(); sleeper.waitUntilExit() }
        let pid = sleeper.processIdentifier
        // Its environment is readable once it has exec'd.
        for _ in 0..<500 where (try? ProcMaps.read(pid: pid))?.contains(where: { $0.path == "/bin/sleep" || $0.path == "/usr/bin/sleep" }) != true {
            usleep(2000)
        }
        let found = try LibraryResolver.locate("libutaplater", pid: pid, executable: nil)
        XCTAssertEqual(found.path, "/proc/\(pid)/root" + directory + "/libutaplater.so.2")
        XCTAssertFalse(found.loaded)
        XCTAssertThrowsError(try LibraryResolver.resolve("libutaplater", pid: getpid(), executable: nil), "not in utap's own paths")
        let libc = try LibraryResolver.locate("libc", pid: pid, executable: nil)
        XCTAssertTrue(libc.loaded)
    }

    func testSystemLibraryThroughTheCache() throws {
        let found = try LibraryResolver.resolve("libc", pid: nil, executable: nil)
        XCTAssertEqual(realPath(found), realPath(libcPath))
    }

    func testUnknownLibraryIsUsageError() {
        XCTAssertThrowsUtapError(try LibraryResolver.resolve("libutap-no-such-lib", pid: nil, executable: nil),
                                 .usage("library 'libutap-no-such-lib': not found", hint: "give the full path, or run with -p PID"))
    }

    /// dir/app with RUNPATH $ORIGIN/lib, and in dir/lib the real libutapdemo.so.1 beside a
    /// linker-script-like text file libutapdemo.so that must be skipped.
    private func makeApp() throws -> (directory: String, app: String) {
        let directory = try Toolchain.temporaryDirectory(self)
        let lib = directory + "/lib"
        try FileManager.default.createDirectory(atPath: lib, withIntermediateDirectories: true)
        _ = try Toolchain.compile("int utap_demo(void) { return 42; }\n", to: "libutapdemo.so.1", in: lib,
                                  flags: ["-shared", "-fPIC", "-Wl,-soname,libutapdemo.so.1"])
        try "INPUT(libutapdemo.so.1)\n".write(toFile: lib + "/libutapdemo.so", atomically: true, encoding: .utf8)
        let app = try Toolchain.compile("int utap_demo(void);\nint main(void) { return utap_demo(); }\n",
                                        to: "app", in: directory,
                                        flags: [lib + "/libutapdemo.so.1", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/lib"])
        return (directory, app)
    }

    func testRunPathWithOrigin() throws {
        let (directory, app) = try makeApp()
        XCTAssertEqual(try ELFImage.open(app).runPaths, ["$ORIGIN/lib"])
        XCTAssertEqual(try LibraryResolver.resolve("libutapdemo", pid: nil, executable: app),
                       realPath(directory)! + "/lib/libutapdemo.so.1")
        XCTAssertThrowsError(try LibraryResolver.resolve("libutapdemo", pid: nil, executable: nil))
    }

    func testLDLibraryPath() throws {
        let (directory, _) = try makeApp()
        let saved = getenv("LD_LIBRARY_PATH").map { String(cString: $0) }
        defer {
            if let saved { setenv("LD_LIBRARY_PATH", saved, 1) } else { unsetenv("LD_LIBRARY_PATH") }
        }
        setenv("LD_LIBRARY_PATH", "/nonexistent::\(directory)/lib/", 1)
        XCTAssertEqual(try LibraryResolver.resolve("libutapdemo", pid: nil, executable: nil),
                       directory + "/lib/libutapdemo.so.1")
    }

    func testRealLDCache() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "/etc/ld.so.cache")))
        let entries = LibraryResolver.parseLDCache(bytes)
        let libc = try XCTUnwrap(entries.first { $0.soname == "libc.so.6" })
        XCTAssertEqual(realPath(libc.path), realPath(libcPath))
    }

    /// A cache written by hand: a header, entries (one x86-64 libc6, one i386 libc6 that
    /// must be skipped) and the strings.
    private func cache(prefix: [UInt8] = []) -> [UInt8] {
        func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        let base = prefix.count
        let stringsStart = UInt32(48 + 2 * 24)
        let strings = Array("libfoo.so.1\0/x/libfoo.so.1\0libbar.so.2\0/y/libbar.so.2\0".utf8)
        var bytes = prefix + Array("glibc-ld.so.cache1.1".utf8) + le32(2) + le32(UInt32(strings.count))
        bytes += [UInt8](repeating: 0, count: 48 - (bytes.count - base))
        bytes += le32(0x0303) + le32(stringsStart) + le32(stringsStart + 12) + le32(0) + [UInt8](repeating: 0, count: 8)
        bytes += le32(0x0003) + le32(stringsStart + 27) + le32(stringsStart + 39) + le32(0) + [UInt8](repeating: 0, count: 8)
        return bytes + strings
    }

    func testHandWrittenLDCache() {
        let expected = [LibraryResolver.CacheEntry(soname: "libfoo.so.1", path: "/x/libfoo.so.1")]
        XCTAssertEqual(LibraryResolver.parseLDCache(cache()), expected)
        // The old format's table first (one 12-byte entry), the new one after it at 32.
        let old = Array("ld.so-1.7.0".utf8) + [0, 1, 0, 0, 0] + [UInt8](repeating: 0, count: 12 + 4)
        XCTAssertEqual(old.count, 32)
        XCTAssertEqual(LibraryResolver.parseLDCache(cache(prefix: old)), expected)
        XCTAssertEqual(LibraryResolver.parseLDCache(Array(cache().prefix(40))), [])
        XCTAssertEqual(LibraryResolver.parseLDCache(Array("not a cache at all".utf8)), [])
    }
}
