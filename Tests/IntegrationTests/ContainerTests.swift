import Foundation
import Glibc
import XCTest

/// `-p PID` of a process that sees the file system differently from utap: in another
/// mount namespace (a container), chrooted inside one, or running a deleted executable.
/// Files are found through /proc/PID/root, /proc/PID/exe and /proc/PID/map_files.
///
/// The namespaces are made with `unshare -m --propagation private`; every mount lives in
/// the target's namespace only and goes away with it.
final class ContainerTests: XCTestCase {
    /// Where the namespaced targets see their files: a tmpfs mounted over /opt in their
    /// namespace only, so utap's namespace has no such path.
    static let app = "/opt/utap-ctr"
    static let count = 100

    /// Host directories made by a test, removed after it.
    private var scratch: [String] = []

    override func setUp() async throws {
        try Harness.requirePrivileges()
        guard access("/usr/bin/unshare", X_OK) == 0 else { throw XCTSkip("no /usr/bin/unshare (util-linux)") }
        XCTAssertNotEqual(access(Self.app, F_OK), 0, "\(Self.app) exists in utap's namespace: the tests would prove nothing")
    }

    override func tearDown() {
        for directory in scratch { _ = try? FileManager.default.removeItem(atPath: directory) }
        scratch = []
    }

    private func makeScratch() -> String {
        var template = Array((NSTemporaryDirectory() + "utap-ctr-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let path = String(cString: template)
        XCTAssertNotNil(made, "mkdtemp failed")
        scratch.append(path)
        return path
    }

    // MARK: Targets

    typealias Target = Harness.WaitingTarget

    /// `program COUNT --wait` in a new mount namespace, from a copy in `app` (a tmpfs over
    /// /opt there) together with the library uselib loads and args_pie.
    private func namespaced(_ program: String, count: Int = count) throws -> Target {
        let script = """
            set -e
            mount -t tmpfs utap-ctr /opt
            mkdir \(Self.app)
            cp "$1/uselib" "$1/libutaptest.so.1" "$1/args_pie" \(Self.app)/
            exec \(Self.app)/"$2" "$3" --wait
            """
        return try Target(executable: "/usr/bin/unshare", arguments: ["-m", "--propagation", "private", "/bin/sh", "-c", script,
                                                                      "sh", Harness.targets, program, String(count)])
    }

    /// `program COUNT --wait` chrooted into `root` inside a new mount namespace: a tmpfs
    /// with /usr (and /lib, /lib64) bound from the host, /proc, and the programs in /app.
    /// The kernel prints the maps paths of such a process with `root` in front.
    private func chrooted(_ program: String, root: String, count: Int = count) throws -> Target {
        let script = """
            set -e
            mount -t tmpfs utap-ctr "$4"
            cd "$4"
            mkdir app proc
            for d in usr lib lib64; do
                if [ -L /$d ]; then ln -s "$(readlink /$d)" $d
                elif [ -d /$d ]; then mkdir $d && mount --bind /$d $d; fi
            done
            mount --bind /proc proc
            cp "$1/uselib" "$1/libutaptest.so.1" "$1/args_pie" app/
            exec chroot "$4" /app/"$2" "$3" --wait
            """
        return try Target(executable: "/usr/bin/unshare", arguments: ["-m", "--propagation", "private", "/bin/sh", "-c", script,
                                               "sh", Harness.targets, program, String(count), root])
    }

    /// Attaches `utap trace --format json -p PID probes`, lets the target run, and returns
    /// utap's result once it stopped by itself at the target's exit; the target's own
    /// result goes to `check`.
    private func trace(_ target: Target, _ probes: [String], file: StaticString = #filePath, line: UInt = #line,
                       check: (Harness.Result) -> Void = { _ in }) throws -> Harness.Result {
        defer { target.kill() }
        let utap = try Harness.Background(["trace", "--format", "json", "-p", String(target.pid)] + probes)
        let ran = target.go()
        XCTAssertEqual(ran.status, 0, "target failed: \(ran.stderr)", file: file, line: line)
        check(ran)
        let r = utap.wait()
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains("pid \(target.pid) exited"), r.stderr, file: file, line: line)
        XCTAssertEqual(r.summary?["lost"] as? Int, 0, file: file, line: line)
        return r
    }

    /// Offset of uselib's `call lib_add@plt` in main: main itself is entered before the
    /// `--wait` handshake, so a probe on main after `ready` sees nothing; this call runs
    /// exactly COUNT times after it.
    private static let callOffset: Int? = {
        guard let r = try? Harness.run("/usr/bin/objdump", ["-d", "--no-show-raw-insn", Harness.target("uselib")]),
              r.status == 0 else { return nil }
        var main: Int?
        for line in r.stdout.split(separator: "\n") {
            if line.hasSuffix(" <main>:") { main = Int(line.prefix { $0 != " " }, radix: 16); continue }
            if main != nil, line.isEmpty || line.hasSuffix(">:") { return nil }
            if let main, line.contains("call"), line.hasSuffix("<lib_add@plt>"),
               let address = Int(line.drop { $0 == " " }.prefix { $0 != ":" }, radix: 16) {
                return address - main
            }
        }
        return nil
    }()

    private func mainCallSite() throws -> String {
        guard let offset = Self.callOffset else { throw XCTSkip("objdump found no call to lib_add@plt in uselib's main") }
        return "main+\(offset)"
    }

    /// uselib's output for COUNT calls: lib_add(i, 100) for i in 0..<COUNT, then lib_greet("world").
    private func uselibOutput(_ count: Int = count) -> String { "sum=\(100 * count + count * (count - 1) / 2) greet=5" }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink(path, &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        buffer[length] = 0
        return String(cString: buffer)
    }

    // MARK: Another mount namespace

    func testTheProcessSeesAPathUtapDoesNot() throws {
        let target = try namespaced("uselib")
        defer { target.kill() }
        XCTAssertEqual(Self.readLink("/proc/\(target.pid)/exe"), Self.app + "/uselib", "the process sees its own path")
        XCTAssertNotEqual(access(Self.app + "/uselib", F_OK), 0, "utap does not")
    }

    func testLibraryByNameInAnotherMountNamespace() throws {
        let r = try trace(try namespaced("uselib"),
                          ["libutaptest:lib_add a=arg0:s32 b=arg1:s32", "libutaptest.so.1:lib_greet s=arg0:str",
                           "libutaptest:lib_add%return n=ret:s32"]) {
            XCTAssertTrue($0.stdout.contains(uselibOutput()), $0.stdout)
        }
        XCTAssertEqual(r.events("libutaptest:lib_add").map { $0.int("a")! }, Array(0..<Int64(Self.count)))
        XCTAssertEqual(Set(r.events("libutaptest:lib_add").map { $0.int("b")! }), [100])
        XCTAssertEqual(r.events("libutaptest:lib_add%return").map { $0.int("n")! }, Array(100..<Int64(100 + Self.count)))
        XCTAssertEqual(r.events("libutaptest.so.1:lib_greet").map { $0.field("s") as? String }, ["world"])
        XCTAssertEqual(r.summary?["events"] as? Int, 2 * Self.count + 1)
    }

    func testExecutableByThePathTheProcessSees() throws {
        let site = try mainCallSite()
        let r = try trace(try namespaced("uselib"), [Self.app + "/uselib:" + site + " i=arg0:s32"])
        XCTAssertEqual(r.events(Self.app + "/uselib:" + site).map { $0.int("i")! }, Array(0..<Int64(Self.count)))

        let args = try trace(try namespaced("args_pie"), [Self.app + "/args_pie:add2 a=arg0 b=arg1"]) {
            XCTAssertTrue($0.stdout.contains("sum=\(3 * Self.count * (Self.count - 1) / 2) strs=309"), $0.stdout)
        }
        let add2 = args.events(Self.app + "/args_pie:add2")
        XCTAssertEqual(add2.map { $0.int("a")! }, Array(0..<Int64(Self.count)))
        XCTAssertEqual(add2.map { $0.int("b")! }, (0..<Int64(Self.count)).map { 2 * $0 })
    }

    func testExecutableOmittedInAnotherMountNamespace() throws {
        let site = try mainCallSite()
        let r = try trace(try namespaced("uselib"), [site])
        XCTAssertEqual(r.events(site).count, Self.count)

        let args = try trace(try namespaced("args_pie"), ["add2 a=arg0", "add2%return r=ret"])
        XCTAssertEqual(args.events("add2").map { $0.int("a")! }, Array(0..<Int64(Self.count)))
        XCTAssertEqual(args.events("add2%return").map { $0.int("r")! }, (0..<Int64(Self.count)).map { 3 * $0 })
    }

    /// main is entered before the handshake: attached after `ready`, a probe on it is in
    /// place (by either name) and sees no call.
    func testMainAfterReadySeesNothing() throws {
        let r = try trace(try namespaced("uselib"), ["main", Self.app + "/uselib:main"])
        XCTAssertEqual(r.events.count, 0)
        XCTAssertEqual(r.summary?["events"] as? Int, 0)
    }

    func testListInAnotherMountNamespace() throws {
        let target = try namespaced("uselib")
        defer { target.kill() }
        let pid = String(target.pid)
        let library = try Harness.utap(["list", "-p", pid, "libutaptest"])
        XCTAssertEqual(library.status, 0, library.stderr)
        XCTAssertTrue(library.stdout.split(separator: "\n").contains("lib_add"), library.stdout)
        let glob = try Harness.utap(["list", "-p", pid, "libutaptest.so.1", "lib_*"])
        XCTAssertEqual(glob.stdout, "lib_add\nlib_greet\n", glob.stderr)
        let verbose = try Harness.utap(["list", "-v", "-p", pid, "libutaptest", "lib_greet"])
        XCTAssertTrue(verbose.stdout.hasPrefix("0x"), verbose.stdout + verbose.stderr)
    }

    /// `utap list -p PID /path/as/the/process/sees/it`, like `utap trace -p PID /path:SYMBOL`.
    func testListByThePathTheProcessSees() throws {
        let target = try namespaced("uselib")
        defer { target.kill() }
        let r = try Harness.utap(["list", "-p", String(target.pid), Self.app + "/uselib", "main"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "main\n")
    }

    // MARK: Chrooted in another mount namespace

    /// A chrooted process's maps paths start with its root directory as utap sees it
    /// (/tmp/utap-ctr-X/app/uselib); the file is /proc/PID/root/app/uselib.
    func testLibraryByNameOfAChrootedProcess() throws {
        let root = makeScratch()
        let target = try chrooted("uselib", root: root)
        defer { target.kill() }
        let maps = (try? String(contentsOfFile: "/proc/\(target.pid)/maps", encoding: .utf8)) ?? ""
        XCTAssertTrue(maps.contains(root + "/app/libutaptest.so.1"), maps)
        let listed = try Harness.utap(["list", "-p", String(target.pid), "libutaptest", "lib_*"])
        XCTAssertEqual(listed.stdout, "lib_add\nlib_greet\n", listed.stderr)
        let site = try mainCallSite()
        let r = try trace(target, ["libutaptest:lib_add a=arg0:s32", "libc:exit", "/app/uselib:" + site, site]) {
            XCTAssertTrue($0.stdout.contains(uselibOutput()), $0.stdout)
        }
        XCTAssertEqual(r.events("libutaptest:lib_add").map { $0.int("a")! }, Array(0..<Int64(Self.count)))
        XCTAssertEqual(r.events("libc:exit").count, 1)
        XCTAssertEqual(r.events("/app/uselib:" + site).count, Self.count)
        XCTAssertEqual(r.events(site).count, Self.count)
    }

    // MARK: Deleted files

    /// Copies `files` from the targets into a fresh directory, starts `program COUNT --wait`
    /// from there, then deletes `deleted` (file names in that directory).
    private func startThenDelete(_ program: String, copying files: [String], deleting deleted: [String],
                                 count: Int = count) throws -> (Target, String) {
        let directory = makeScratch()
        for file in files {
            try FileManager.default.copyItem(atPath: Harness.target(file), toPath: directory + "/" + file)
        }
        let target = try Target(executable: directory + "/" + program, arguments: [String(count), "--wait"])
        for file in deleted { XCTAssertEqual(unlink(directory + "/" + file), 0) }
        let maps = (try? String(contentsOfFile: "/proc/\(target.pid)/maps", encoding: .utf8)) ?? ""
        for file in deleted { XCTAssertTrue(maps.contains(directory + "/" + file + " (deleted)"), maps) }
        return (target, directory)
    }

    func testDeletedExecutableThroughProcExe() throws {
        let (target, _) = try startThenDelete("args_pie", copying: ["args_pie"], deleting: ["args_pie"])
        let r = try trace(target, ["add2 a=arg0 b=arg1", "add2%return r=ret"]) {
            XCTAssertTrue($0.stdout.contains("sum=\(3 * Self.count * (Self.count - 1) / 2) strs=309"), $0.stdout)
        }
        XCTAssertEqual(r.events("add2").map { $0.int("a")! }, Array(0..<Int64(Self.count)))
        XCTAssertEqual(r.events("add2").map { $0.int("b")! }, (0..<Int64(Self.count)).map { 2 * $0 })
        XCTAssertEqual(r.events("add2%return").map { $0.int("r")! }, (0..<Int64(Self.count)).map { 3 * $0 })
    }

    func testDeletedLibraryThroughMapFiles() throws {
        let (target, _) = try startThenDelete("uselib", copying: ["uselib", "libutaptest.so.1"],
                                              deleting: ["libutaptest.so.1"])
        let listed = try Harness.utap(["list", "-p", String(target.pid), "libutaptest", "lib_*"])
        XCTAssertEqual(listed.stdout, "lib_add\nlib_greet\n", listed.stderr)
        let r = try trace(target, ["libutaptest:lib_add a=arg0:s32"])
        XCTAssertEqual(r.events("libutaptest:lib_add").map { $0.int("a")! }, Array(0..<Int64(Self.count)))
    }

    /// The path the deleted executable had still names it for `-p PID`: the process runs
    /// the deleted file, not whatever may be there now.
    func testDeletedExecutableByItsFormerPath() throws {
        let (target, directory) = try startThenDelete("args_pie", copying: ["args_pie"], deleting: ["args_pie"])
        let r = try trace(target, [directory + "/args_pie:add2 a=arg0"])
        XCTAssertEqual(r.events(directory + "/args_pie:add2").map { $0.int("a")! }, Array(0..<Int64(Self.count)))
    }

    /// A library replaced under the process (a new file renamed over the old one, as a
    /// package upgrade does) and named by a symlink to it: the probe goes on the file the
    /// process maps, not on the new one the symlink now leads to.
    func testReplacedLibraryBySymlinkPath() throws {
        let directory = makeScratch()
        for file in ["uselib", "libutaptest.so.1"] {
            try FileManager.default.copyItem(atPath: Harness.target(file), toPath: directory + "/" + file)
        }
        XCTAssertEqual(symlink("libutaptest.so.1", directory + "/libutaptest.so"), 0)
        let target = try Target(executable: directory + "/uselib", arguments: [String(Self.count), "--wait"])
        try FileManager.default.copyItem(atPath: directory + "/libutaptest.so.1", toPath: directory + "/new")
        XCTAssertEqual(rename(directory + "/new", directory + "/libutaptest.so.1"), 0)
        let maps = (try? String(contentsOfFile: "/proc/\(target.pid)/maps", encoding: .utf8)) ?? ""
        XCTAssertTrue(maps.contains(directory + "/libutaptest.so.1 (deleted)"), maps)
        let probe = directory + "/libutaptest.so:lib_add"
        let r = try trace(target, [probe + " a=arg0:s32"])
        XCTAssertEqual(r.events(probe).map { $0.int("a")! }, Array(0..<Int64(Self.count)))
    }
}
