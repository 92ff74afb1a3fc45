// The ELF reader (ELFImage, libelf underneath): any file either opens or is refused with a
// usage error, and what it yields holds together: symbols sorted and findable by name and
// address, and segment lookups agreeing with the file's own bytes.
import UtapCore

private let scratch = ScratchFile()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzELFImage(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let file = Array(UnsafeBufferPointer(start: data, count: size))
    scratch.write(file)
    guard let image = try? ELFImage.open(scratch.path) else { return 0 }
    checkFunctions(image)
    checkSegments(image, file: file)
    precondition(image.runPaths.allSatisfy { !$0.isEmpty }, "an empty run path")
    return 0
}

private func checkFunctions(_ image: ELFImage) {
    let functions = image.functions
    for (previous, next) in zip(functions, functions.dropFirst()) {
        precondition((previous.address, previous.name) < (next.address, next.name), "functions out of order or twice")
    }
    for function in functions {
        precondition(!function.name.isEmpty && !function.name.contains("@"), "bad name '\(function.name)'")
        precondition(image.functions(named: function.name).contains(function), "\(function.name) not found by name")
        // An address inside any function has an enclosing function, which contains it.
        for address in [function.address, function.address &+ function.size / 2, function.address &+ function.size] {
            if let enclosing = image.enclosingFunction(of: address) {
                precondition(enclosing.contains(address), "\(enclosing.name) does not contain 0x\(String(address, radix: 16))")
            } else {
                precondition(!function.contains(address), "no function around 0x\(String(address, radix: 16))")
            }
        }
    }
}

/// Code bytes are read by ELF address through the segments: they must be the file's bytes
/// at the offset `fileOffset(ofVirtualAddress:)` gives.
private func checkSegments(_ image: ELFImage, file: [UInt8]) {
    let probes = image.segments.flatMap { [$0.virtualAddress, $0.virtualAddress &+ $0.fileSize &- 1] }
        + image.functions.prefix(64).map(\.address)
    for address in probes {
        guard let offset = image.fileOffset(ofVirtualAddress: address) else {
            precondition(image.bytes(atVirtualAddress: address, count: 16) == nil, "bytes without a file offset")
            continue
        }
        guard let bytes = image.bytes(atVirtualAddress: address, count: 16) else { continue }
        precondition(bytes.count <= 16, "more bytes than asked for")
        precondition(bytes.isEmpty || offset < UInt64(file.count) && bytes.elementsEqual(file[Int(offset)...].prefix(bytes.count)),
                     "bytes at 0x\(String(address, radix: 16)) are not the file's at offset \(offset)")
    }
}
