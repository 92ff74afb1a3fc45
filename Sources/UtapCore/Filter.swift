/// One step of a compiled `--filter`, in postfix order (the layout of utap_abi.h's
/// struct utap_filter_insn, as plain values).
public struct FilterInstruction: Equatable, Sendable {
    public enum Operation: UInt8, Sendable { case compare = 0, and, or, not }
    public enum Operand: UInt8, Sendable {
        case arg0 = 0, arg1, arg2, arg3, arg4, arg5, ret
        case pid = 8, tid, comm, latency
    }
    public enum Comparison: UInt8, Sendable { case eq = 0, ne, lt, le, gt, ge }

    public var operation: Operation
    public var operand: Operand = .arg0
    public var comparison: Comparison = .eq
    public var isSigned = false
    /// Bytes of the operand compared: 1, 2, 4 or 8.
    public var width: UInt8 = 8
    public var value: UInt64 = 0
    /// `comm`: bytes 8..15 of the name.
    public var value2: UInt64 = 0

    public init(operation: Operation, operand: Operand = .arg0, comparison: Comparison = .eq, isSigned: Bool = false,
                width: UInt8 = 8, value: UInt64 = 0, value2: UInt64 = 0) {
        self.operation = operation
        self.operand = operand
        self.comparison = comparison
        self.isSigned = isSigned
        self.width = width
        self.value = value
        self.value2 = value2
    }
}

/// `--filter EXPR`: comparisons of args, ret, pid, tid, comm and latency joined by `&&`,
/// `||`, `!` and parentheses, compiled to a postfix program the BPF side runs per hit.
///
///     EXPR    := OR;  OR := AND ('||' AND)*;  AND := UNARY ('&&' UNARY)*
///     UNARY   := '!' UNARY | '(' OR ')' | OPERAND OP VALUE
///     OPERAND := argN[:TYPE] | ret[:TYPE] | pid | tid | comm | latency
///     OP      := == != < <= > >=      VALUE := integer (0x hex) | "string" (comm) |
///                                              duration with ns/us/ms/s (latency)
public enum FilterCompiler {
    public static let maxInstructions = 32

    /// Whether the program reads `ret` or `latency`, which only return probes have.
    public static func needsReturn(_ program: [FilterInstruction]) -> Bool {
        program.contains { $0.operation == .compare && ($0.operand == .ret || $0.operand == .latency) }
    }

    /// Whether the filter reads an argument register, which a return has overwritten.
    public static func readsArguments(_ program: [FilterInstruction]) -> Bool {
        program.contains { $0.operation == .compare && $0.operand.rawValue <= FilterInstruction.Operand.arg5.rawValue }
    }

    public static func compile(_ text: String) throws(UtapError) -> [FilterInstruction] {
        var parser = Parser(text: text)
        let program = try parser.parseOr()
        try parser.skipSpaces()
        if !parser.atEnd {
            throw parser.error("unexpected '\(parser.rest.prefix(12))'")
        }
        guard program.count <= maxInstructions else {
            throw .usage("--filter: \(program.count) steps, at most \(maxInstructions)", hint: "simplify the expression")
        }
        return program
    }

    struct Parser {
        let text: String
        var index: String.Index

        init(text: String) {
            self.text = text
            index = text.startIndex
        }

        var atEnd: Bool { index == text.endIndex }
        var rest: Substring { text[index...] }

        func error(_ why: String) -> UtapError {
            .usage("--filter '\(text)': \(why)", hint: "e.g. --filter 'arg0 > 100 && comm == \"nginx\"'")
        }

        mutating func skipSpaces() throws(UtapError) {
            while index < text.endIndex, text[index] == " " || text[index] == "\t" { index = text.index(after: index) }
        }

        mutating func take(_ token: String) throws(UtapError) -> Bool {
            try skipSpaces()
            guard rest.hasPrefix(token) else { return false }
            index = text.index(index, offsetBy: token.count)
            return true
        }

        mutating func parseOr() throws(UtapError) -> [FilterInstruction] {
            var program = try parseAnd()
            while try take("||") {
                program += try parseAnd() + [FilterInstruction(operation: .or)]
            }
            return program
        }

        mutating func parseAnd() throws(UtapError) -> [FilterInstruction] {
            var program = try parseUnary()
            while try take("&&") {
                program += try parseUnary() + [FilterInstruction(operation: .and)]
            }
            return program
        }

        mutating func parseUnary() throws(UtapError) -> [FilterInstruction] {
            if try take("!") {
                return try parseUnary() + [FilterInstruction(operation: .not)]
            }
            if try take("(") {
                let inner = try parseOr()
                guard try take(")") else { throw error("missing ')'") }
                return inner
            }
            return [try parseComparison()]
        }

        mutating func word() throws(UtapError) -> Substring {
            try skipSpaces()
            let start = index
            while index < text.endIndex, text[index].isLetter || text[index].isNumber || "_:[]".contains(text[index]) {
                index = text.index(after: index)
            }
            return text[start..<index]
        }

        mutating func parseComparison() throws(UtapError) -> FilterInstruction {
            let operandText = try word()
            guard !operandText.isEmpty else { throw error("expected an operand (argN, ret, pid, tid, comm, latency)") }
            var instruction = FilterInstruction(operation: .compare)
            let (name, typeText) = split(operandText)
            switch name {
            case "pid": instruction.operand = .pid; instruction.width = 4
            case "tid": instruction.operand = .tid; instruction.width = 4
            case "comm": instruction.operand = .comm
            case "latency": instruction.operand = .latency
            case "ret": instruction.operand = .ret; instruction.isSigned = true
            default:
                guard name.hasPrefix("arg"), name.count == 4, let n = UInt8(name.dropFirst(3)), n <= 5,
                      let operand = FilterInstruction.Operand(rawValue: n) else {
                    throw error("unknown operand '\(name)'")
                }
                instruction.operand = operand
                instruction.isSigned = true
            }
            if let typeText {
                guard instruction.operand.rawValue <= FilterInstruction.Operand.ret.rawValue else {
                    throw error("only argN and ret take a type, not '\(operandText)'")
                }
                let table: [Substring: (UInt8, Bool)] = ["s8": (1, true), "u8": (1, false), "s16": (2, true), "u16": (2, false),
                                                         "s32": (4, true), "u32": (4, false), "s64": (8, true), "u64": (8, false)]
                guard let (width, signed) = table[typeText] else { throw error("'\(typeText)' is not an integer type") }
                instruction.width = width
                instruction.isSigned = signed
            }
            instruction.comparison = try comparison()
            try skipSpaces()
            if instruction.operand == .comm {
                guard instruction.comparison == .eq || instruction.comparison == .ne else {
                    throw error("comm compares only with == and !=")
                }
                let name = try quoted()
                guard name.utf8.count <= 15 else { throw error("comm \"\(name)\" is longer than a process name (15 bytes)") }
                var bytes = Array(name.utf8) + [UInt8](repeating: 0, count: 16 - name.utf8.count)
                instruction.value = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self) }
                instruction.value2 = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) }
                bytes.removeAll()
            } else {
                instruction.value = try number(duration: instruction.operand == .latency)
            }
            return instruction
        }

        func split(_ operand: Substring) -> (Substring, Substring?) {
            guard let colon = operand.firstIndex(of: ":") else { return (operand, nil) }
            return (operand[..<colon], operand[operand.index(after: colon)...])
        }

        mutating func comparison() throws(UtapError) -> FilterInstruction.Comparison {
            for (token, comparison) in [("==", FilterInstruction.Comparison.eq), ("!=", .ne), ("<=", .le), (">=", .ge),
                                        ("<", .lt), (">", .gt)] where try take(token) {
                return comparison
            }
            throw error("expected a comparison (== != < <= > >=)")
        }

        mutating func quoted() throws(UtapError) -> String {
            guard try take("\"") else { throw error("comm compares with a \"quoted\" name") }
            guard let close = rest.firstIndex(of: "\"") else { throw error("missing closing '\"'") }
            let value = String(text[index..<close])
            index = text.index(after: close)
            return value
        }

        /// An integer (decimal or 0x hex, may be negative), or for latency a duration.
        mutating func number(duration: Bool) throws(UtapError) -> UInt64 {
            let start = index
            if index < text.endIndex, text[index] == "-" { index = text.index(after: index) }
            while index < text.endIndex, text[index].isHexDigit || text[index] == "x" || text[index] == "X" {
                index = text.index(after: index)
            }
            var digits = text[start..<index]
            let negative = digits.hasPrefix("-")
            if negative { digits = digits.dropFirst() }
            let magnitude = ProbeParser.parseInteger(digits)
            var unit: UInt64 = 1
            if duration {
                for (suffix, scale) in [("ns", UInt64(1)), ("us", 1000), ("ms", 1_000_000), ("s", 1_000_000_000)] where try take(suffix) {
                    unit = scale
                    break
                }
            }
            guard let magnitude, !digits.isEmpty, !(negative && duration),
                  magnitude.multipliedReportingOverflow(by: unit).overflow == false else {
                throw error("'\(text[start..<index])' is not a number\(duration ? " or duration (10ms, 2s)" : "")")
            }
            let value = magnitude * unit
            return negative ? 0 &- value : value
        }
    }
}

/// Runs a compiled `--filter` program in user space (the ptrace backend), with the
/// semantics of the BPF side's `passes_filter`.
public enum FilterEvaluator {
    /// `sources`: arg0…arg5 then ret (7 values). `latency` nil when the hit has none.
    public static func passes(_ program: [FilterInstruction], sources: [UInt64], pid: Int32, tid: Int32,
                              comm: String, latency: UInt64?) -> Bool {
        guard !program.isEmpty else { return true }
        var stack: [Bool] = []
        for instruction in program {
            switch instruction.operation {
            case .compare:
                stack.append(compare(instruction, sources: sources, pid: pid, tid: tid, comm: comm, latency: latency))
            case .and, .or:
                guard stack.count >= 2 else { return false }
                let b = stack.removeLast(), a = stack.removeLast()
                stack.append(instruction.operation == .and ? a && b : a || b)
            case .not:
                guard let top = stack.popLast() else { return false }
                stack.append(!top)
            }
        }
        return stack.last ?? true
    }

    static func compare(_ instruction: FilterInstruction, sources: [UInt64], pid: Int32, tid: Int32, comm: String,
                        latency: UInt64?) -> Bool {
        let value: UInt64
        switch instruction.operand {
        case .comm:
            var bytes = [UInt8](comm.utf8.prefix(15))
            bytes += [UInt8](repeating: 0, count: 16 - bytes.count)
            let low = bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            let high = bytes[8..<16].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            let same = low == instruction.value && high == instruction.value2
            return instruction.comparison == .ne ? !same : same
        case .latency:
            guard let latency else { return false }
            value = latency
        case .pid:
            value = UInt64(UInt32(bitPattern: pid))
        case .tid:
            value = UInt64(UInt32(bitPattern: tid))
        default:
            let index = Int(instruction.operand.rawValue & 7)
            value = index < sources.count ? sources[index] : 0
        }
        let signed = instruction.isSigned
        let a: UInt64
        switch instruction.width {
        case 1: a = signed ? UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: value))) : value & 0xFF
        case 2: a = signed ? UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: value))) : value & 0xFFFF
        case 4: a = signed ? UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: value))) : value & 0xFFFF_FFFF
        default: a = value
        }
        let b = instruction.value
        let (sa, sb) = (Int64(bitPattern: a), Int64(bitPattern: b))
        switch instruction.comparison {
        case .eq: return a == b
        case .ne: return a != b
        case .lt: return signed ? sa < sb : a < b
        case .le: return signed ? sa <= sb : a <= b
        case .gt: return signed ? sa > sb : a > b
        case .ge: return signed ? sa >= sb : a >= b
        }
    }
}
