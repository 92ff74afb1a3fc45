// The /proc/PID/maps parser: any text gives at most one entry per line, and each entry
// written back as a maps line parses to itself.
import UtapCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProcMaps(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let entries = ProcMaps.parse(text)
    precondition(entries.count <= text.split(separator: "\n").count, "more entries than lines")
    for entry in entries {
        let line = mapsLine(entry)
        precondition(ProcMaps.parse(line) == [entry], "'\(line)' does not parse back to its entry")
    }
    return 0
}

/// The line the kernel would print for `entry` (its padding before the path is one space).
private func mapsLine(_ entry: MapEntry) -> String {
    let fields = ["\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))", entry.perms,
                  String(entry.offset, radix: 16), entry.device, String(entry.inode)]
    let path = entry.path + (entry.isDeleted ? " (deleted)" : "")
    return (fields + (path.isEmpty ? [] : [path])).joined(separator: " ")
}
