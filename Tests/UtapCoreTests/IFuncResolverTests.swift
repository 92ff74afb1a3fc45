import Foundation
import XCTest
@testable import UtapCore

final class IFuncResolverTests: XCTestCase {
    func testStrlenResolvesToTheCodeThisProcessRuns() throws {
        // The libc this process has loaded, by the path it was loaded from.
        let path = try XCTUnwrap(try ProcMaps.read(pid: getpid()).first { $0.path.hasSuffix("/libc.so.6") }?.path)
        let image = try ELFImage.open(path)
        let strlen = try XCTUnwrap(image.functions(named: "strlen").first)
        XCTAssertTrue(strlen.isIFunc)
        let implementation = try IFuncResolver.implementation(of: strlen, in: image)
        XCTAssertFalse(implementation.isIFunc)
        XCTAssertNotEqual(implementation.address, strlen.address)
        // Its bytes in the file are the bytes of the strlen this process calls.
        let fileBytes = try XCTUnwrap(image.bytes(atVirtualAddress: implementation.address, count: 32))
        // libc's own strlen (a sanitizer's interceptor may be the global one).
        let libc = try XCTUnwrap(dlopen(path, RTLD_NOW | RTLD_NOLOAD))
        defer { dlclose(libc) }
        let running = try XCTUnwrap(dlsym(libc, "strlen"))
        XCTAssertEqual(fileBytes, Array(UnsafeRawBufferPointer(start: running, count: 32)))
    }

    func testOrdinaryFunctionIsUnchanged() throws {
        let image = try ELFImage.open(libcPath)
        let malloc = try XCTUnwrap(image.functions(named: "malloc").first)
        XCTAssertEqual(try IFuncResolver.implementation(of: malloc, in: image), malloc)
    }

    func testLibraryNotLoadedHereThenLoaded() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let path = try Toolchain.compile("""
            int pick_a(void) { return 1; }
            int pick_b(void) { return 2; }
            static void *resolve_pick(void) { return (void *)pick_b; }
            int pick(void) __attribute__((ifunc("resolve_pick")));
            /* A local alias, as glibc's __GI_ names: not exported, dlsym cannot find it. */
            extern __typeof(pick) pick_local __attribute__((alias("pick"), visibility("hidden")));
            """, to: "libpick.so", in: directory, flags: ["-shared", "-fPIC"])
        let image = try ELFImage.open(path)
        let pick = try XCTUnwrap(image.functions(named: "pick").first)
        XCTAssertTrue(pick.isIFunc)
        XCTAssertThrowsUtapError(try IFuncResolver.implementation(of: pick, in: image),
                                 .usage("'pick' in \(path) is an IFUNC: the implementation depends on the process",
                                        hint: "probe one of them by name: pick_a, pick_b"))

        let handle = try XCTUnwrap(dlopen(path, RTLD_NOW))
        defer { dlclose(handle) }
        XCTAssertEqual(try IFuncResolver.implementation(of: pick, in: image), image.functions(named: "pick_b").first)
        let local = try XCTUnwrap(image.functions(named: "pick_local").first)
        XCTAssertTrue(local.isIFunc)
        XCTAssertNil(dlsym(handle, "pick_local"))
        XCTAssertEqual(try IFuncResolver.implementation(of: local, in: image), image.functions(named: "pick_b").first,
                       "resolved through the exported name of the same resolver")
    }
}
