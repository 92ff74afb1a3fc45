import ArgumentParser
import Glibc
import UtapCore

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the functions and USDT probes TARGET offers for probing.",
        discussion: """
        TARGET is an ELF path or a library name (resolved in -p PID's mappings, else through
        ld.so.cache). C++, Rust and Swift names are shown demangled. PATTERN is a shell glob
        over the demangled name (also without its parameter list, e.g. 'ns::Class::*'), or
        the mangled one. Output is one name per line, sorted, so it pipes into grep and wc.
        With -v each line is ADDRESS SIZE ENTRY NAME, then [ifunc] for IFUNCs, then the
        mangled name when the name is demangled (always the last word). ENTRY is where an
        entry probe by name goes and what a hit costs there: '+4 emulated' (the kernel
        emulates the instruction, well under a microsecond) or '+0 stepped' (it
        single-steps it, 10-20 us, included in a return probe's latency); '+0 vector' for
        a vector (AVX) instruction, which only the ptrace backend probes (README);
        '+0 refused' for one neither backend probes (a lock prefix, a system
        instruction); '-' for an IFUNC (its probe goes on the implementation) or
        unreadable code. USDT probes follow the
        functions as usdt:TARGET:PROVIDER:NAME lines, ready to use as probes (PATTERN
        matches PROVIDER:NAME or NAME; -v adds the site and argument specs).

        Examples:
          utap list libc 'str*'
          utap list -v /usr/bin/python3 'PyEval_*'
          utap list libstdc++ 'std::locale::*'
          utap list -p 4242 libssl.so.3
          utap list /usr/bin/python3.11 'python:*'
        """)

    @Option(name: .shortAndLong, help: "Resolve TARGET in this process's mappings.")
    var pid: Int32?

    @Flag(name: .shortAndLong, help: "Also print address, size, entry probe site and cost, IFUNC marks.")
    var verbose = false

    @Argument(help: "ELF file or library name.")
    var target: String

    @Argument(help: "Glob over function names, demangled or mangled.")
    var pattern: String?

    func run() throws {
        let path = if let pid, target.contains("/") {
            LibraryResolver.pathInProcess(target, pid: pid)
        } else {
            try LibraryResolver.resolve(target, pid: pid, executable: nil)
        }
        let image = try ELFImage.open(path)
        let functions = image.functions.map { (symbol: $0, demangled: Demangler.name($0.name)) }
            .filter { f in
                guard let pattern else { return true }
                return fnmatch(pattern, f.symbol.name, 0) == 0 || f.demangled?.matches(glob: pattern) == true
            }
            .map { (symbol: $0.symbol, shown: $0.demangled?.text ?? $0.symbol.name) }
            .sorted { ($0.shown, $0.symbol.name) < ($1.shown, $1.symbol.name) }
        // Without -v one line per name (a C++ constructor's variants read the same);
        // with -v one per symbol.
        var seen = Set<String>()
        var text = ""
        for f in functions where seen.insert(verbose ? f.symbol.name : f.shown).inserted {
            if verbose {
                let address = "0x" + String(f.symbol.address, radix: 16)
                let mangled = f.shown != f.symbol.name ? " " + f.symbol.name : ""
                text += "\(address.padding(18)) \(String(f.symbol.size).padding(8)) \(entryText(f.symbol, in: image).padding(13)) "
                    + "\(f.shown)\(f.symbol.isIFunc ? " [ifunc]" : "")\(mangled)\n"
            } else {
                text += f.shown + "\n"
            }
        }
        // USDT probes follow, as probes to paste: usdt:TARGET:PROVIDER:NAME.
        var probes = 0
        var seenProbes = Set<String>()
        for sdt in try SDTNotes.read(path) {
            let name = "\(sdt.provider):\(sdt.name)"
            guard pattern.map({ fnmatch($0, name, 0) == 0 || fnmatch($0, sdt.name, 0) == 0 }) ?? true,
                  seenProbes.insert(verbose ? "\(name)@\(sdt.address)" : name).inserted else { continue }
            probes += 1
            text += "usdt:\(target):\(name)"
            if verbose {
                text += "  (0x\(String(sdt.address, radix: 16))\(sdt.semaphore != 0 ? ", semaphore" : ""); \(sdt.argumentText))"
            }
            text += "\n"
        }
        signal(SIGPIPE, SIG_IGN)
        _ = text.withCString { write(STDOUT_FILENO, $0, strlen($0)) }
        if functions.isEmpty && probes == 0 {
            throw UtapError.runtime("\(path): no function or USDT probe matches '\(pattern ?? "*")'", hint: image.strippedHint)
        }
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

/// ENTRY of `utap list -v`: where an entry probe on `symbol` goes and whether the kernel
/// emulates the instruction there.
private func entryText(_ symbol: ELFSymbol, in image: ELFImage) -> String {
    guard !symbol.isIFunc, symbol.size > 0,
          let code = image.bytes(atVirtualAddress: symbol.address, count: Int(clamping: symbol.size)) else { return "-" }
    let entry = InstructionDecoder.entryPlacement(in: code, goStackCheck: image.isGoProgram)
    switch InstructionAnalysis.uprobeProblem(Array(code[entry.offset...].prefix(16)), at: symbol.address + UInt64(entry.offset)) {
    case .vector: return "+\(entry.offset) vector"
    case .refused: return "+\(entry.offset) refused"
    case nil: return "+\(entry.offset) \(entry.emulated ? "emulated" : "stepped")"
    }
}
