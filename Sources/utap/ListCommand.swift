import ArgumentParser
import Glibc
import UtapCore

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the functions TARGET offers for probing.",
        discussion: """
        TARGET is an ELF path or a library name (resolved in -p PID's mappings, else through
        ld.so.cache). PATTERN is a shell glob. Output is one name per line, sorted, so it
        pipes into grep and wc.

        Examples:
          utap list libc 'str*'
          utap list -v /usr/bin/python3 'PyEval_*'
          utap list -p 4242 libssl.so.3
        """)

    @Option(name: .shortAndLong, help: "Resolve TARGET in this process's mappings.")
    var pid: Int32?

    @Flag(name: .shortAndLong, help: "Also print address, size and IFUNC marks.")
    var verbose = false

    @Argument(help: "ELF file or library name.")
    var target: String

    @Argument(help: "Glob over function names.")
    var pattern: String?

    func run() throws {
        let path = try LibraryResolver.resolve(target, pid: pid, executable: nil)
        let image = try ELFImage.open(path)
        var seen = Set<String>()
        let functions = image.functions
            .filter { pattern == nil || fnmatch(pattern!, $0.name, 0) == 0 }
            .sorted { $0.name < $1.name }
            .filter { seen.insert($0.name).inserted }
        var text = ""
        for f in functions {
            if verbose {
                let address = "0x" + String(f.address, radix: 16)
                text += "\(address.padding(18)) \(String(f.size).padding(8)) \(f.name)\(f.isIFunc ? " [ifunc]" : "")\n"
            } else {
                text += f.name + "\n"
            }
        }
        signal(SIGPIPE, SIG_IGN)
        _ = text.withCString { write(STDOUT_FILENO, $0, strlen($0)) }
        if functions.isEmpty {
            throw UtapError.runtime("\(path): no function matches '\(pattern ?? "*")'")
        }
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
