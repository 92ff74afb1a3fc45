// The USDT note reader (SDTNotes over libelf, USDTArgument for each argument spec). An
// input that starts like an ELF file is read as one; anything else is taken as a note's
// argument text, so the spec parser also gets inputs no note-bearing file would reach.
import UtapCore

private let scratch = ScratchFile()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSDTNotes(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    if input.starts(with: [0x7F, 0x45, 0x4C, 0x46]) {
        scratch.write(input)
        guard let probes = try? SDTNotes.read(scratch.path) else { return 0 }
        for probe in probes {
            let specs = probe.argumentText.split(separator: " ")
            precondition(probe.arguments.count == specs.count, "arguments and their specs differ in number")
            zip(specs, probe.arguments).forEach(checkArgument)
        }
    } else {
        for spec in String(decoding: input, as: UTF8.self).split(separator: " ") {
            checkArgument(spec, USDTArgument.parse(spec))
        }
    }
    return 0
}

/// A parsed argument has a size the tracer can read, and written back as `[-]SIZE@OPERAND`
/// parses to itself.
private func checkArgument(_ spec: Substring, _ argument: USDTArgument?) {
    guard let argument else { return }
    precondition([1, 2, 4, 8].contains(argument.size), "'\(spec)': size \(argument.size)")
    if case .memory(let base, _, let size) = argument.location {
        precondition(size == argument.size && base != .rip, "'\(spec)': bad memory operand")
    }
    let written = "\(argument.isSigned ? -argument.size : argument.size)@\(argument.location)"
    precondition(USDTArgument.parse(written[...]) == argument, "'\(spec)' and '\(written)' differ")
}
