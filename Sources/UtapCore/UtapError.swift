/// The one error type users see. `description` is the single line printed after
/// `utap: error: `; `hint` is printed on a second line when it helps.
public struct UtapError: Error, CustomStringConvertible, Equatable {
    public enum Code: Equatable, Sendable {
        /// Bad command line or probe text: exit status 2.
        case usage
        /// Something failed while resolving, attaching or tracing: exit status 1.
        case runtime
    }

    public var code: Code
    /// `WHAT: WHY`.
    public var message: String
    public var hint: String?

    public init(_ code: Code, _ message: String, hint: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public static func usage(_ message: String, hint: String? = nil) -> UtapError {
        UtapError(.usage, message, hint: hint)
    }

    public static func runtime(_ message: String, hint: String? = nil) -> UtapError {
        UtapError(.runtime, message, hint: hint)
    }

    public var exitStatus: Int32 { code == .usage ? 2 : 1 }
    public var description: String { message }
}
