import Glibc
import UtapCore
import UtapOutput
import XCTest

/// Runs `body` against an `OutputBuffer` over an unlinked temporary file, flushes, and
/// returns exactly the bytes that reached the file.
func captured(_ body: (OutputBuffer) throws -> Void) throws -> [UInt8] {
    let fd = temporaryFile()
    defer { close(fd) }
    do {
        let output = OutputBuffer(fd: fd, ownsFD: false)
        try body(output)
        try output.flush()
    }
    return readAll(fd, from: 0)
}

/// An open, already unlinked file.
func temporaryFile() -> Int32 {
    var template = Array("/tmp/utap-output-test-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    precondition(fd >= 0, "mkstemp failed")
    template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
    return fd
}

/// Everything readable from `fd` (from `offset` when given, for files).
func readAll(_ fd: Int32, from offset: off_t? = nil) -> [UInt8] {
    if let offset { lseek(fd, offset, SEEK_SET) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return result }
        result += chunk[..<n]
    }
}

/// Compares bytes with the UTF-8 of `expected`, showing both as text when they differ.
func assertBytes(_ actual: [UInt8], _ expected: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    if actual != Array(expected.utf8) {
        XCTFail("got\n\(String(decoding: actual, as: UTF8.self))\nwant\n\(expected)",
                file: file, line: line)
    }
}

let malloc = ProbeDescriptor(name: "libc:malloc", kind: .entry, fieldNames: ["size"])
let mallocReturn = ProbeDescriptor(name: "libc:malloc%return", kind: .return,
                                   fieldNames: ["ret"])

func event(probe: Int = 0, kind: ProbeKind = .entry, ts: UInt64 = 123,
           fields: [FieldValue], latency: UInt64? = nil, stack: [String]? = nil) -> Event {
    Event(timestampNs: ts, pid: 42, tid: 43, comm: "app", probe: probe, kind: kind,
          fields: fields, latencyNs: latency, stack: stack)
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
