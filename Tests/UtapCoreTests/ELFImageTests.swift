import Foundation
import XCTest
@testable import UtapCore

/// Builds small programs at test time and reads facts about them with binutils, so tests
/// compare against an independent reader instead of constants of this machine.
enum Toolchain {
    static func temporaryDirectory(_ test: XCTestCase) throws -> String {
        var template = Array((NSTemporaryDirectory() + "/utap-test-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        let path = String(cString: made)
        test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// Runs a tool and returns its stdout; fails the test when it exits non-zero.
    @discardableResult
    static func run(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            XCTFail("\(arguments.joined(separator: " ")) exited \(process.terminationStatus)", file: file, line: line)
            throw POSIXError(.EIO)
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Compiles `source` with `cc` into `directory/name` and returns its path.
    static func compile(_ source: String, to name: String, in directory: String, flags: [String]) throws -> String {
        let sourcePath = directory + "/" + name + ".c"
        try source.write(toFile: sourcePath, atomically: true, encoding: .utf8)
        let output = directory + "/" + name
        try run(["cc", "-O1", "-o", output, sourcePath] + flags)
        return output
    }

    /// `readelf -s` rows: defined symbols by name (first occurrence, version suffix kept).
    static func symbols(of path: String, dynamic: Bool = false) throws -> [String: (value: UInt64, size: UInt64, type: String)] {
        var table: [String: (UInt64, UInt64, String)] = [:]
        for line in try run(["readelf", "-W", dynamic ? "--dyn-syms" : "-s", path]).split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 8, fields[0].hasSuffix(":"), fields[6] != "UND",
                  let value = UInt64(fields[1], radix: 16) else { continue }
            let size = fields[2].hasPrefix("0x") ? UInt64(fields[2].dropFirst(2), radix: 16)! : UInt64(fields[2])!
            let name = String(fields[7])
            if table[name] == nil { table[name] = (value, size, String(fields[3])) }
        }
        return table
    }

    /// `readelf -l` LOAD rows.
    static func loadSegments(of path: String) throws -> [LoadSegment] {
        try run(["readelf", "-W", "-l", path]).split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.first == "LOAD" else { return nil }
            let number = { (i: Int) in UInt64(fields[i].dropFirst(2), radix: 16)! }
            // Flags ("R E") may span fields; the alignment is last.
            let flags = fields[6..<(fields.count - 1)].joined()
            return LoadSegment(virtualAddress: number(2), memorySize: number(5), fileOffset: number(1),
                               fileSize: number(4), isExecutable: flags.contains("E"))
        }
    }
}

func XCTAssertThrowsUtapError<T>(_ expression: @autoclosure () throws -> T, _ expected: UtapError,
                                  file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try expression(), file: file, line: line) { error in
        XCTAssertEqual(error as? UtapError, expected, file: file, line: line)
    }
}

let libcPath = "/lib/x86_64-linux-gnu/libc.so.6"

final class ELFImageTests: XCTestCase {
    static let program = """
        __attribute__((noinline)) int utap_add(int a, int b) { return a + b * 3; }
        __attribute__((noinline)) int utap_sub(int a, int b) { return a - b * 5; }
        __attribute__((noinline)) int utap_mul(int a, int b) { return a * b + 7; }
        int __utap_impl(int a) { return a * 11; }
        int utap_alias(int a) __attribute__((alias("__utap_impl")));
        int main(int argc, char **argv) { return utap_add(argc, 2) + utap_sub(argc, 1) + utap_mul(argc, 3); }
        """

    func testMissingFileIsUsageError() {
        XCTAssertThrowsUtapError(try ELFImage.open("/nonexistent/utap/x"), .usage("'/nonexistent/utap/x': no such file"))
    }

    func testDirectoryIsUsageError() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        XCTAssertThrowsUtapError(try ELFImage.open(directory), .usage("'\(directory)': is a directory"))
    }

    func testTextFileIsNotELF() throws {
        let path = try Toolchain.temporaryDirectory(self) + "/notes.txt"
        try "just some text that is long enough\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsUtapError(try ELFImage.open(path), .usage("'\(path)': not an ELF file"))
        let empty = path + ".empty"
        XCTAssertTrue(FileManager.default.createFile(atPath: empty, contents: Data()))
        XCTAssertThrowsUtapError(try ELFImage.open(empty), .usage("'\(empty)': not an ELF file"))
    }

    func testForeignArchitecturesAreNamed() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "/usr/bin/true")))
        let aarch64 = directory + "/aarch64"
        bytes[18] = 0xB7
        bytes[19] = 0x00
        try Data(bytes).write(to: URL(fileURLWithPath: aarch64))
        XCTAssertThrowsUtapError(try ELFImage.open(aarch64),
                                 .usage("'\(aarch64)': ELF for AArch64, this machine is x86-64"))
        let i386 = directory + "/i386"
        bytes[4] = 1
        bytes[18] = 3
        try Data(bytes).write(to: URL(fileURLWithPath: i386))
        XCTAssertThrowsUtapError(try ELFImage.open(i386),
                                 .usage("'\(i386)': 32-bit ELF for x86, this machine is x86-64"))
    }

    func testPIEProgramMatchesReadelf() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let path = try Toolchain.compile(Self.program, to: "pie", in: directory,
                                         flags: ["-fPIE", "-pie", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/lib:/opt/utap"])
        let image = try ELFImage.open(path)
        XCTAssertEqual(image.path, path)
        XCTAssertTrue(image.isSharedObject)
        XCTAssertTrue(image.hasSymtab)
        XCTAssertEqual(image.needed, ["libc.so.6"])
        XCTAssertEqual(image.runPaths, ["$ORIGIN/lib", "/opt/utap"])
        XCTAssertEqual(image.segments, try Toolchain.loadSegments(of: path))

        let symbols = try Toolchain.symbols(of: path)
        for name in ["utap_add", "utap_sub", "utap_mul", "main"] {
            let expected = try XCTUnwrap(symbols[name])
            XCTAssertEqual(image.functions(named: name),
                           [ELFSymbol(name: name, address: expected.value, size: expected.size, isIFunc: false)])
        }
        XCTAssertEqual(image.functions(named: "nothing_like_this"), [])
        XCTAssertEqual(image.functions, image.functions.sorted { ($0.address, $0.name) < ($1.address, $1.name) })

        // The function's code through the program headers equals the file's bytes there.
        let add = try XCTUnwrap(image.functions(named: "utap_add").first)
        let text = try XCTUnwrap(image.segments.first { $0.isExecutable })
        let expectedOffset = add.address - text.virtualAddress + text.fileOffset
        XCTAssertEqual(image.fileOffset(ofVirtualAddress: add.address), expectedOffset)
        let file = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let start = Int(expectedOffset)
        XCTAssertEqual(image.bytes(atVirtualAddress: add.address, count: Int(add.size)),
                       Array(file[start..<(start + Int(add.size))]))
    }

    func testEnclosingFunction() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let image = try ELFImage.open(try Toolchain.compile(Self.program, to: "prog", in: directory, flags: []))
        let add = try XCTUnwrap(image.functions(named: "utap_add").first)
        XCTAssertEqual(image.enclosingFunction(of: add.address), add)
        XCTAssertEqual(image.enclosingFunction(of: add.address + add.size - 1), add)
        XCTAssertNotEqual(image.enclosingFunction(of: add.address + add.size)?.name, "utap_add")
        XCTAssertNil(image.enclosingFunction(of: 0))
        // Aliases of one range: the plainer name wins.
        let impl = try XCTUnwrap(image.functions(named: "__utap_impl").first)
        XCTAssertEqual(image.functions(named: "utap_alias").first?.address, impl.address)
        XCTAssertEqual(image.enclosingFunction(of: impl.address + 1)?.name, "utap_alias")
    }

    func testNonPIEAddressesAndOffsets() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let path = try Toolchain.compile(Self.program, to: "nopie", in: directory, flags: ["-fno-PIE", "-no-pie"])
        let image = try ELFImage.open(path)
        XCTAssertFalse(image.isSharedObject)
        let expected = try XCTUnwrap(try Toolchain.symbols(of: path)["utap_mul"])
        let mul = try XCTUnwrap(image.functions(named: "utap_mul").first)
        XCTAssertEqual(mul.address, expected.value)
        let segments = try Toolchain.loadSegments(of: path)
        let text = try XCTUnwrap(segments.first { $0.isExecutable })
        XCTAssertEqual(image.fileOffset(ofVirtualAddress: mul.address),
                       mul.address - text.virtualAddress + text.fileOffset)
        // Below the first segment, and in .bss (memory but no file bytes): nothing.
        let lowest = try XCTUnwrap(segments.map(\.virtualAddress).min())
        XCTAssertNil(image.fileOffset(ofVirtualAddress: lowest - 1))
        if let bss = segments.first(where: { $0.memorySize > $0.fileSize }) {
            let address = bss.virtualAddress + bss.fileSize
            XCTAssertNil(image.fileOffset(ofVirtualAddress: address))
            XCTAssertNil(image.bytes(atVirtualAddress: address, count: 1))
        }
        // Reads stop where the segment's file bytes end.
        let end = text.virtualAddress + text.fileSize
        XCTAssertEqual(image.bytes(atVirtualAddress: end - 2, count: 16)?.count, 2)
    }

    func testStrippedProgramKeepsDynamicSymbols() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let path = try Toolchain.compile(Self.program, to: "stripped", in: directory, flags: ["-rdynamic"])
        let before = try XCTUnwrap(try ELFImage.open(path).functions(named: "utap_sub").first)
        try Toolchain.run(["strip", path])
        let image = try ELFImage.open(path)
        XCTAssertFalse(image.hasSymtab)
        XCTAssertEqual(image.functions(named: "utap_sub"), [before])
    }

    /// Builds `name` from `program`, keeps its symbols in `debugPath` (objcopy
    /// --only-keep-debug) and strips it; returns the program's path and its functions
    /// before stripping.
    private func strippedWithDebugFile(_ program: String, _ name: String, in directory: String, flags: [String] = [],
                                       debugPath: (String) -> String) throws -> (path: String, functions: [ELFSymbol]) {
        let path = try Toolchain.compile(program, to: name, in: directory, flags: flags)
        let functions = try ELFImage.open(path).functions
        let debug = debugPath(path)
        try FileManager.default.createDirectory(atPath: (debug as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try Toolchain.run(["objcopy", "--only-keep-debug", path, debug])
        try Toolchain.run(["strip", "--strip-all", path])
        return (path, functions)
    }

    func testStrippedProgramTakesItsFunctionsFromItsDebugLink() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let debug = directory + "/.debug/prog.debug"
        let (path, functions) = try strippedWithDebugFile(Self.program, "prog", in: directory) { _ in debug }
        XCTAssertNil(try ELFImage.open(path).debugFile, "no link yet")
        XCTAssertNotNil(try ELFImage.open(path).strippedHint)
        try Toolchain.run(["objcopy", "--add-gnu-debuglink=" + debug, path])
        let image = try ELFImage.open(path)
        XCTAssertFalse(image.hasSymtab)
        XCTAssertEqual(image.debugFile, debug)
        XCTAssertNil(image.strippedHint)
        XCTAssertEqual(image.functions, functions, "every function, at its address, with its size")
        // Code is still read from the program, not from the debug file (which has none).
        let add = try XCTUnwrap(image.functions(named: "utap_add").first)
        XCTAssertEqual(image.bytes(atVirtualAddress: add.address, count: 4)?.count, 4)
        XCTAssertNotEqual(image.bytes(atVirtualAddress: add.address, count: 4), [0, 0, 0, 0])
    }

    func testStrippedProgramFindsItsDebugFileByBuildID() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let debugDirectory = directory + "/debug"
        let (path, functions) = try strippedWithDebugFile(Self.program, "prog", in: directory, flags: ["-Wl,--build-id"]) { path in
            let id = (try? ELFImage.open(path).buildID) ?? []
            let hex = id.map { String(format: "%02x", $0) }
            return debugDirectory + "/.build-id/" + hex[0] + "/" + hex.dropFirst().joined() + ".debug"
        }
        XCTAssertNil(try ELFImage.open(path).debugFile, "not under /usr/lib/debug")
        setenv("UTAP_DEBUG_DIR", "/nonexistent:" + debugDirectory, 1)
        defer { unsetenv("UTAP_DEBUG_DIR") }
        let image = try ELFImage.open(path)
        XCTAssertEqual(image.functions, functions)
        XCTAssertTrue(image.debugFile?.hasPrefix(debugDirectory + "/.build-id/") == true, image.debugFile ?? "nil")
    }

    /// A debug file of another build (a different build ID, or without build IDs, another
    /// CRC) has other addresses: never used.
    func testDebugFileOfAnotherBuildIsIgnored() throws {
        for flags in [["-Wl,--build-id"], ["-Wl,--build-id=none"]] {
            let directory = try Toolchain.temporaryDirectory(self)
            let debug = directory + "/.debug/prog.debug"
            let (path, _) = try strippedWithDebugFile(Self.program, "prog", in: directory, flags: flags) { _ in debug }
            try Toolchain.run(["objcopy", "--add-gnu-debuglink=" + debug, path])
            XCTAssertEqual(try ELFImage.open(path).debugFile, debug, "\(flags)")
            // Another program's symbols under the same name.
            _ = try strippedWithDebugFile(Self.program + "int utap_extra(void) { return 1; }\n", "other", in: directory,
                                          flags: flags) { _ in debug }
            let image = try ELFImage.open(path)
            XCTAssertNil(image.debugFile, "\(flags)")
            XCTAssertEqual(image.functions(named: "utap_add"), [], "\(flags)")
            XCTAssertNotNil(image.strippedHint)
        }
    }

    /// Adds `.gnu_debugdata` to the stripped program at `path` the way Fedora's
    /// find-debuginfo does: the function symbols `.dynsym` lacks, taken from `full` into
    /// an ELF of symbols only, xz-compressed.
    private func addMiniDebugInfo(to path: String, from full: String, in directory: String) throws {
        let dynamic = Set(try Toolchain.symbols(of: full, dynamic: true).keys)
        let functions = try Toolchain.symbols(of: full).filter { $0.value.type == "FUNC" && !dynamic.contains($0.key) }
        try functions.keys.sorted().joined(separator: "\n").write(toFile: directory + "/keep", atomically: true, encoding: .utf8)
        try Toolchain.run(["objcopy", "--only-keep-debug", full, directory + "/mini"])
        try Toolchain.run(["objcopy", "-S", "--remove-section", ".comment", "--keep-symbols=" + directory + "/keep",
                           directory + "/mini"])
        try Toolchain.run(["xz", "-f", directory + "/mini"])
        try Toolchain.run(["objcopy", "--add-section", ".gnu_debugdata=" + directory + "/mini.xz", path])
    }

    func testStrippedProgramTakesItsFunctionsFromMiniDebugInfo() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let full = try Toolchain.compile(Self.program + "static int utap_local(int x) { return x * 7; }\n"
                                         + "int (*utap_keep)(int) = utap_local;\n",
                                         to: "full", in: directory, flags: ["-rdynamic"])
        let functions = try ELFImage.open(full).functions
        XCTAssertFalse(functions.filter { $0.name == "utap_local" }.isEmpty, "a local function to find")
        let path = directory + "/prog"
        try Toolchain.run(["strip", "--strip-all", "-o", path, full])
        XCTAssertEqual(try ELFImage.open(path).functions(named: "utap_local"), [], "stripped")
        try addMiniDebugInfo(to: path, from: full, in: directory)
        let image = try ELFImage.open(path)
        XCTAssertFalse(image.hasSymtab)
        XCTAssertTrue(image.hasMiniDebugInfo)
        XCTAssertNil(image.debugFile)
        XCTAssertNil(image.strippedHint, "every function has its name")
        XCTAssertEqual(image.functions, functions, "every function, at its address, with its size")
    }

    /// A `.gnu_debugdata` that is no xz stream, or one cut short, names nothing and
    /// breaks nothing.
    func testBrokenMiniDebugInfoIsIgnored() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let full = try Toolchain.compile(Self.program, to: "full", in: directory, flags: ["-rdynamic"])
        let path = directory + "/prog"
        try Toolchain.run(["strip", "--strip-all", "-o", path, full])
        let stripped = try ELFImage.open(path).functions
        try Toolchain.run(["cp", path, directory + "/valid"])
        try addMiniDebugInfo(to: directory + "/valid", from: full, in: directory)
        let xz = try Data(contentsOf: URL(fileURLWithPath: directory + "/mini.xz"))
        for (name, bytes) in [("garbage", Data("not an xz stream".utf8)), ("cut", xz.prefix(xz.count / 2))] {
            let section = directory + "/" + name
            try bytes.write(to: URL(fileURLWithPath: section))
            let broken = directory + "/prog-" + name
            try Toolchain.run(["objcopy", "--add-section", ".gnu_debugdata=" + section, path, broken])
            let image = try ELFImage.open(broken)
            XCTAssertFalse(image.hasMiniDebugInfo, name)
            XCTAssertEqual(image.functions, stripped, name)
            XCTAssertNotNil(image.strippedHint, name)
        }
    }

    func testDebugFileCandidates() {
        let link = DebugFiles.Link(name: "x.debug", crc: 7)
        XCTAssertEqual(DebugFiles.candidates(for: "/usr/bin/x", buildID: [0xAB, 0xCD, 0x01], link: link, directories: ["/d"]),
                       [.init(path: "/d/.build-id/ab/cd01.debug", crc: nil), .init(path: "/usr/bin/x.debug", crc: nil),
                        .init(path: "/usr/bin/.debug/x.debug", crc: nil), .init(path: "/d/usr/bin/x.debug", crc: nil)])
        // No build ID: a link is checked by its CRC; inside a process's root, so are the places.
        XCTAssertEqual(DebugFiles.candidates(for: "/proc/42/root/lib/x", buildID: [], link: link, directories: ["/d"]),
                       [.init(path: "/proc/42/root/lib/x.debug", crc: 7), .init(path: "/proc/42/root/lib/.debug/x.debug", crc: 7),
                        .init(path: "/proc/42/root/d/lib/x.debug", crc: 7)])
        XCTAssertEqual(DebugFiles.candidates(for: "/lib/x", buildID: [], link: .init(name: "../../etc/x", crc: 0), directories: ["/d"]), [],
                       "a link names a file, not a path")
        XCTAssertEqual(DebugFiles.splitProcRoot("/proc/self/root/x").root, "")
    }

    func testDebugLinkCRC() throws {
        let path = try Toolchain.temporaryDirectory(self) + "/data"
        try "123456789".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(DebugFiles.crc32(ofFile: path), 0xCBF4_3926, "the CRC-32 check value")
        XCTAssertNil(DebugFiles.crc32(ofFile: path + ".missing"))
        let bytes: [UInt8] = Array("a.debug".utf8) + [0] + [0x78, 0x56, 0x34, 0x12]
        XCTAssertEqual(bytes.withUnsafeBytes { DebugFiles.parseLink($0) }, .init(name: "a.debug", crc: 0x1234_5678))
        XCTAssertNil([UInt8](Array("a.debug".utf8) + [0, 1]).withUnsafeBytes { DebugFiles.parseLink($0) })
    }

    func testLibcIFuncsAndVersions() throws {
        let image = try ELFImage.open(libcPath)
        let dynamic = try Toolchain.symbols(of: libcPath, dynamic: true)
        let strlen = try XCTUnwrap(dynamic["strlen@@GLIBC_2.2.5"])
        XCTAssertEqual(image.functions(named: "strlen"),
                       [ELFSymbol(name: "strlen", address: strlen.value, size: strlen.size, isIFunc: true)])
        let malloc = try XCTUnwrap(dynamic["malloc@@GLIBC_2.2.5"])
        XCTAssertEqual(image.functions(named: "malloc"),
                       [ELFSymbol(name: "malloc", address: malloc.value, size: malloc.size, isIFunc: false)])
        // memcpy@GLIBC_2.2.5 (old) and memcpy@@GLIBC_2.14 (default): the name means the default.
        let memcpy = try XCTUnwrap(dynamic["memcpy@@GLIBC_2.14"])
        XCTAssertEqual(image.functions(named: "memcpy").map(\.address), [memcpy.value])
        XCTAssertTrue(image.needed.contains { $0.hasPrefix("ld-linux-x86-64.so") })
        XCTAssertTrue(image.isSharedObject)
    }

    /// Among aliases, code addresses are named by the name a program links against today:
    /// not an old version (`cfree@GLIBC_2.2.5`) nor a weak alias (`index`).
    func testAliasesAreNamedByTheirCurrentGlobalName() throws {
        let image = try ELFImage.open(libcPath)
        let dynamic = try Toolchain.symbols(of: libcPath, dynamic: true)
        let free = try XCTUnwrap(dynamic["free@@GLIBC_2.2.5"]).value
        XCTAssertNotNil(dynamic["cfree@GLIBC_2.2.5"], "libc keeps cfree as an old-version alias of free")
        XCTAssertEqual(image.enclosingFunction(of: free + 3)?.name, "free")
        let strchr = try XCTUnwrap(dynamic["strchr@@GLIBC_2.2.5"]).value
        XCTAssertEqual(dynamic["index@@GLIBC_2.2.5"]?.value, strchr, "index is a weak alias of strchr")
        XCTAssertEqual(image.enclosingFunction(of: strchr)?.name, "strchr")
    }

    func testSuggestions() throws {
        let directory = try Toolchain.temporaryDirectory(self)
        let image = try ELFImage.open(try Toolchain.compile(Self.program, to: "prog", in: directory, flags: []))
        XCTAssertEqual(image.suggestions(for: "utap_"), ["utap_add", "utap_mul", "utap_sub", "utap_alias", "__utap_impl"])
        XCTAssertEqual(image.suggestions(for: "utap_", limit: 2), ["utap_add", "utap_mul"])
        XCTAssertEqual(image.suggestions(for: "UTAP_ADDD"), ["utap_add"])
        XCTAssertEqual(image.suggestions(for: "mian").first, "main")
        XCTAssertEqual(image.suggestions(for: "utap_add"), [])
        XCTAssertEqual(image.suggestions(for: "zzzzzzzzzzzz"), [])
    }
}
