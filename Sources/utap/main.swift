import ArgumentParser
import Glibc
import UtapCore
import UtapOutput

/// utap's root command: only wires subcommands; errors become one line on stderr.
struct Utap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "utap",
        abstract: "Trace functions of running programs and shared libraries with uprobes.",
        discussion: """
        Examples:
          utap trace 'libc:malloc size=arg0:u64' -- ./app
          utap trace -p 4242 'libc:write fd=arg0:s32 len=arg2:u64'
          utap count --by-pid 'libc:malloc' 'libc:free'
          utap latency 'libc:malloc' -- ./app
          utap list libc 'str*'
          utap doctor

        utap attaches uprobes and runs as root.
        """,
        version: "utap \(utapVersion)",
        subcommands: [Trace.self, Count.self, Latency.self, List.self, Doctor.self])
}

/// The release this binary is (`utap --version`).
let utapVersion = "0.1.0"


/// ArgumentParser's messages, rephrased into utap's `WHAT: WHY` shape.
enum ParserMessage {
    static func rephrased(_ message: String) -> String {
        let text = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
        let quoted = text.split(separator: "'", omittingEmptySubsequences: false).enumerated()
            .filter { $0.offset % 2 == 1 }.map { String($0.element) }
        if text.hasPrefix("The value "), quoted.count >= 2 {
            let rest = text.components(after: ". ") ?? "invalid value"
            return "\(quoted[1]): invalid value '\(quoted[0])': \(rest)"
        }
        for (prefix, why) in [("Missing value for ", "missing value"), ("Unknown option ", "unknown option"),
                              ("Missing expected argument ", "missing argument"),
                              ("Unexpected argument ", "unexpected argument")] where text.hasPrefix(prefix) {
            return "\(quoted.first ?? text): \(why)"
        }
        return "command line: \(text)"
    }
}

extension String {
    /// The text after the first occurrence of `separator`.
    func components(after separator: String) -> String? {
        var rest = Substring(self)
        while !rest.isEmpty {
            if rest.hasPrefix(separator) { return String(rest.dropFirst(separator.count)) }
            rest = rest.dropFirst()
        }
        return nil
    }
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
    /// Whether `--` was given at all (a `--` with nothing after it is an error).
    nonisolated(unsafe) static var hasTerminator = false

    static func split(_ arguments: [String]) -> [String] {
        guard let dashes = arguments.firstIndex(of: "--") else { return arguments }
        hasTerminator = true
        command = Array(arguments[(dashes + 1)...])
        return Array(arguments[..<dashes])
    }
}

do {
    var command = try Utap.parseAsRoot(CommandLineSplit.split(Array(CommandLine.arguments.dropFirst())))
    try command.run()
} catch let error as UtapError {
    reportAndExit(error)
} catch let error as OutputError {
    reportAndExit(.runtime(error.description))
} catch let exit as ExitCode {
    Glibc.exit(exit.rawValue)
} catch {
    // Help and version are clean exits; everything else the parser rejects is a usage error.
    if Utap.exitCode(for: error) == .success { Utap.exit(withError: error) }
    let message = Utap.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
    reportAndExit(.usage(ParserMessage.rephrased(message), hint: "see 'utap --help'"))
}
