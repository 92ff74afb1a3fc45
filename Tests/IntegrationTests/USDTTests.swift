import Foundation
import Glibc
import XCTest

/// USDT probes from .note.stapsdt: arguments decoded from the note's specs, semaphores.
final class USDTTests: XCTestCase {
    override func setUp() async throws {
        try Harness.requirePrivileges()
    }

    private func usdt(_ name: String) -> String { "usdt:\(Harness.target("usdt")):utaptest:\(name)" }

    func testArgumentsAndSemaphoreGuardedProbes() throws {
        try Harness.eachBackend { backend in
            for path in ["multi", "perf"] {
                let r = try Harness.utap(["trace", "--format", "json", usdt("tick"), usdt("message") + " msg=arg0:str",
                                          usdt("guarded") + " i=arg0", "--", Harness.target("usdt"), "25"],
                                         environment: ["UTAP_ATTACH": path])
                XCTAssertEqual(r.status, 0, r.stderr)
                // The guarded probe runs only while the kernel counts a tracer in its semaphore.
                XCTAssertTrue(r.stdout.contains("guarded=25"), "\(path): \(r.stdout)")
                let ticks = r.events(usdt("tick"))
                XCTAssertEqual(ticks.map { $0.int("arg0")! }, Array(0..<25), path)
                XCTAssertEqual(ticks.map { $0.int("arg1")! }, (0..<25).map { -$0 }, path)
                XCTAssertEqual(r.events(usdt("message")).map { $0.field("msg") as? String }, ["hello usdt"], path)
                XCTAssertEqual(r.events(usdt("guarded")).map { $0.int("i")! }, Array(0..<25), path)
            }
            let untraced = try Harness.run(Harness.target("usdt"), ["25"])
            XCTAssertEqual(untraced.stdout, "guarded=0\n", "without a tracer the semaphore stays 0")
        }
    }

    /// Debian's python3.11 ships SDT notes: gc__start's argument is a memory operand
    /// (-4@112(%rsp)) and the probe is semaphore-guarded.
    func testPythonGarbageCollectorProbe() throws {
        try Harness.eachBackend { backend in
            let python = "/usr/bin/python3.11"
            guard access(python, X_OK) == 0 else {
                if Harness.inCI { XCTFail("python3.11 is missing") }
                throw XCTSkip("no \(python)")
            }
            let probe = "usdt:\(python):python:gc__start"
            let r = try Harness.utap(["trace", "--format", "json", probe + " generation=arg0", "--", python, "-c",
                                      "import gc; gc.disable(); gc.collect(1); gc.collect(0); gc.collect(1); print('done')"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let generations = r.events(probe).map { $0.int("generation")! }
            let ours: [Int64] = [1, 0, 1]
            XCTAssertTrue(stride(from: 0, to: generations.count - 2, by: 1).contains { Array(generations[$0..<($0 + 3)]) == ours },
                          "gc.collect(1), (0), (1) in a row: \(generations)")
            XCTAssertTrue(generations.allSatisfy { (0...2).contains($0) }, "\(generations)")
        }
    }

    func testUnknownProbeListsWhatTheFileHas() throws {
        let r = try Harness.utap(["trace", usdt("nosuch"), "--", Harness.target("usdt")])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("no USDT probe utaptest:nosuch"), r.stderr)
        XCTAssertTrue(r.stderr.contains("utaptest:guarded"), r.stderr)
        let tooFar = try Harness.utap(["trace", usdt("message") + " x=arg3", "--", Harness.target("usdt")])
        XCTAssertEqual(tooFar.status, 2)
        XCTAssertTrue(tooFar.stderr.contains("has 1 argument, no arg3"), tooFar.stderr)
    }
}

/// `utap list` shows a file's USDT probes as ready-to-use probe strings.
final class USDTListTests: XCTestCase {
    func testListShowsProbesAfterFunctions() throws {
        try Harness.requirePrivileges()
        let usdt = Harness.target("usdt")
        let r = try Harness.utap(["list", usdt, "utaptest:*"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, ["tick", "message", "guarded"].map { "usdt:\(usdt):utaptest:\($0)\n" }.joined())
        // The site and argument specs as readelf reports them.
        let readelf = try Harness.run("/bin/sh", ["-c", "readelf -n '\(usdt)' | grep -A3 'Name: tick$'"])
        let location = try XCTUnwrap(readelf.stdout.split(separator: "\n").first { $0.contains("Location:") })
        let site = try XCTUnwrap(location.split(separator: " ").drop { $0 != "Location:" }.dropFirst().first)
            .trimmingCharacters(in: CharacterSet(charactersIn: ","))
        let arguments = try XCTUnwrap(readelf.stdout.split(separator: "\n").first { $0.contains("Arguments:") })
            .split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
        let address = "0x" + String(UInt64(site.dropFirst(2), radix: 16)!, radix: 16)
        let verbose = try Harness.utap(["list", "-v", usdt, "tick"])
        XCTAssertEqual(verbose.stdout, "usdt:\(usdt):utaptest:tick  (\(address), semaphore; \(arguments))\n")
    }
}
