import ArgumentParser
import Glibc
import UtapCore

/// utap's root command: only wires subcommands; errors become one line on stderr.
struct Utap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "utap",
        abstract: "Trace functions of running programs and shared libraries with uprobes.",
        discussion: """
        Examples:
          utap trace 'libc:malloc size=arg0:u64' -- ./app
          utap trace -p 4242 'libc:write fd=arg0:s32 len=arg2:u64'
          utap list libc 'str*'
          utap doctor

        utap attaches uprobes and runs as root.
        """,
        subcommands: [Trace.self, List.self, Doctor.self])
}

func reportAndExit(_ error: UtapError) -> Never {
    var text = "utap: error: \(error.message)\n"
    if let hint = error.hint { text += "utap: hint: \(hint)\n" }
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    exit(error.exitStatus)
}

/// `utap trace PROBE... -- COMMAND ARG...`: everything after the first `--` is the command.
enum CommandLineSplit {
    nonisolated(unsafe) static var command: [String] = []

    static func split(_ arguments: [String]) -> [String] {
        guard let dashes = arguments.firstIndex(of: "--") else { return arguments }
        command = Array(arguments[(dashes + 1)...])
        return Array(arguments[..<dashes])
    }
}

do {
    var command = try Utap.parseAsRoot(CommandLineSplit.split(Array(CommandLine.arguments.dropFirst())))
    try command.run()
} catch let error as UtapError {
    reportAndExit(error)
} catch let exit as ExitCode {
    Glibc.exit(exit.rawValue)
} catch {
    // Help and version are clean exits; everything else the parser rejects is a usage error.
    if Utap.exitCode(for: error) == .success { Utap.exit(withError: error) }
    let message = Utap.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
    let cleaned = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
    reportAndExit(.usage(cleaned, hint: "see 'utap --help'"))
}
