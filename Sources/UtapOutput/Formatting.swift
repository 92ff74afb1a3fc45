/// Number and string formatting shared by both writers: one place decides how a decimal,
/// a hex value or an escaped byte string looks.
extension OutputBuffer {
    /// Appends `value` in decimal, zero-padded to at least `minDigits` digits.
    @inline(__always)
    public func appendDecimal(_ value: UInt64, minDigits: Int = 1) {
        // Flags, indexes and small counts are most fields' values: one byte, no call.
        if value < 10 && minDigits <= 1 { return append(0x30 + UInt8(truncatingIfNeeded: value)) }
        appendDecimalDigits(value, minDigits: minDigits)
    }

    private func appendDecimalDigits(_ value: UInt64, minDigits: Int) {
        let count = max(decimalDigitCount(value), minDigits)
        // Written last digit first, straight into the buffer: eight digits at a time in
        // 32-bit arithmetic (timestamps have 13 or more; 64-bit division costs more), two
        // per division inside those.
        let start = reserve(count)
        var cursor = start + count
        var rest = value
        while rest >= 100_000_000 {
            writeDigitPairs(UInt32(truncatingIfNeeded: rest % 100_000_000), pairs: 4, endingAt: &cursor)
            rest /= 100_000_000
        }
        var low = UInt32(truncatingIfNeeded: rest)
        while low >= 10 {
            writeDigitPairs(low % 100, pairs: 1, endingAt: &cursor)
            low /= 100
        }
        if low > 0 || cursor == start + count {
            cursor -= 1
            cursor.pointee = 0x30 + UInt8(truncatingIfNeeded: low)
        }
        while cursor > start {
            cursor -= 1
            cursor.pointee = 0x30
        }
        commit(count)
    }

    /// Writes the last `2 * pairs` decimal digits of `value`, leading zeros included,
    /// just before `cursor`, and moves it back over them.
    @inline(__always)
    private func writeDigitPairs(_ value: UInt32, pairs: Int, endingAt cursor: inout UnsafeMutablePointer<UInt8>) {
        let table = digitPairs.utf8Start
        var rest = value
        for _ in 0..<pairs {
            let pair = Int(truncatingIfNeeded: rest % 100) &* 2
            rest /= 100
            cursor -= 2
            cursor[0] = table[pair]
            cursor[1] = table[pair + 1]
        }
    }

    /// Appends the last `2 * pairs` decimal digits of `value`, leading zeros included.
    @inline(__always)
    func appendDigitPairs(_ value: UInt32, pairs: Int) {
        let start = reserve(2 * pairs)
        var cursor = start + 2 * pairs
        writeDigitPairs(value, pairs: pairs, endingAt: &cursor)
        commit(2 * pairs)
    }

    /// Appends `value` in decimal with a leading `-` when negative (Int64.min included).
    public func appendDecimal(_ value: Int64) {
        if value < 0 { append(0x2D) }
        appendDecimal(value.magnitude)
    }

    /// Appends `value` as `0x` and lowercase hex digits without leading zeros (`0x0`).
    public func appendHex(_ value: UInt64) {
        let count = max((value.bitWidth - value.leadingZeroBitCount + 3) / 4, 1)
        let text = reserve(count + 2)
        text[0] = 0x30  // 0
        text[1] = 0x78  // x
        var rest = value
        for index in stride(from: count + 1, through: 2, by: -1) {
            text[index] = hexDigit(UInt8(truncatingIfNeeded: rest & 0xF))
            rest >>= 4
        }
        commit(count + 2)
    }

    /// Appends `prefix` and the byte as two lowercase hex digits (`\x`, `\u00`).
    @inline(__always)
    func appendEscapedByte(_ byte: UInt8, prefix: StaticString) {
        append(prefix)
        append(hexDigit(byte >> 4))
        append(hexDigit(byte & 0xF))
    }
}

/// Decimal text of nanosecond timestamps, for a stream of them that rarely goes back:
/// the digits above the last six are kept from the previous timestamp (they change once
/// a millisecond), so most timestamps cost six digits, not fourteen or more.
final class TimestampDecimals {
    private var high = UInt64.max
    private let highText = UnsafeMutablePointer<UInt8>.allocate(capacity: 20)
    private var highCount = 0

    deinit { highText.deallocate() }

    @inline(__always)
    func append(_ value: UInt64, to output: OutputBuffer) {
        let high = value / 1_000_000
        if high == self.high {
            output.append(UnsafeBufferPointer(start: highText, count: highCount))
        } else {
            guard high > 0 else { return output.appendDecimal(value) }
            appendAndKeep(high: high, to: output)
        }
        output.appendDigitPairs(UInt32(truncatingIfNeeded: value - high * 1_000_000), pairs: 3)
    }

    /// Out of line: once a millisecond.
    private func appendAndKeep(high: UInt64, to output: OutputBuffer) {
        let start = output.bufferedCount
        output.appendDecimal(high)
        highCount = output.bufferedCount - start
        output.copyBuffered(from: start, count: highCount, to: highText)
        self.high = high
    }
}

/// Digits `value` needs in decimal: estimated from its bit length (log10(2) ~ 1233/4096),
/// then corrected by one comparison, instead of a loop of divisions.
@inline(__always)
func decimalDigitCount(_ value: UInt64) -> Int {
    // value | 1 has as many digits as value (an odd number is no power of ten but 1) and
    // gives 0 its one digit.
    let odd = value | 1
    let bits = UInt64.bitWidth - odd.leadingZeroBitCount
    let estimate = (bits &* 1233) >> 12  // floor(log10(2^bits)), never more than 19
    return odd < powersOfTen[estimate] ? estimate : estimate + 1
}

/// 10^0 ... 10^19: what `decimalDigitCount` compares with. Literals, so the table is
/// laid out at compile time: a computed one cost a lazy-initialisation check per use.
private let powersOfTen: [UInt64] = [
    1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000,
    10_000_000_000, 100_000_000_000, 1_000_000_000_000, 10_000_000_000_000, 100_000_000_000_000,
    1_000_000_000_000_000, 10_000_000_000_000_000, 100_000_000_000_000_000,
    1_000_000_000_000_000_000, 10_000_000_000_000_000_000,
]

/// "00" through "99", for writing decimals two digits at a time; a literal, so reading
/// it costs no lazy initialisation.
private var digitPairs: StaticString {
    """
    00010203040506070809101112131415161718192021222324252627282930313233343536373839\
    40414243444546474849505152535455565758596061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899
    """
}

@inline(__always)
private func hexDigit(_ nibble: UInt8) -> UInt8 {
    nibble < 10 ? 0x30 + nibble : 0x57 + nibble  // 0x57 + 10 == "a"
}

/// Length of the well-formed UTF-8 sequence (Unicode Table 3-7) starting at `index`, or 0
/// when the bytes there are not one: overlong forms, surrogates, code points above
/// U+10FFFF, stray continuation bytes and sequences cut off by the end all give 0.
@inline(__always)
func utf8SequenceLength(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) -> Int {
    let lead = bytes[index]
    let length: Int
    var low: UInt8 = 0x80
    var high: UInt8 = 0xBF
    switch lead {
    case 0x00...0x7F: return 1
    case 0xC2...0xDF: length = 2
    case 0xE0: length = 3; low = 0xA0
    case 0xE1...0xEC, 0xEE...0xEF: length = 3
    case 0xED: length = 3; high = 0x9F
    case 0xF0: length = 4; low = 0x90
    case 0xF1...0xF3: length = 4
    case 0xF4: length = 4; high = 0x8F
    default: return 0
    }
    guard index + length <= bytes.count else { return 0 }
    let second = bytes[index + 1]
    guard second >= low && second <= high else { return 0 }
    for offset in 2..<length where bytes[index + offset] & 0xC0 != 0x80 {
        return 0
    }
    return length
}

extension OutputBuffer {
    /// Appends `bytes` as a quoted JSON string (RFC 8259). Well-formed UTF-8 passes through;
    /// every byte that is not part of one is written as `\u00XX` of its value, so nothing
    /// read from the target is ever dropped.
    public func appendJSONString(_ bytes: UnsafeBufferPointer<UInt8>) {
        append(0x22)
        // Runs of bytes that need no escape are copied in one append.
        var run = 0
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte >= 0x20 && byte < 0x80 && byte != 0x22 && byte != 0x5C {
                index += 1
                continue
            }
            if byte >= 0x80 {
                let length = utf8SequenceLength(bytes, at: index)
                if length > 0 {
                    index += length
                    continue
                }
            }
            append(UnsafeBufferPointer(rebasing: bytes[run..<index]))
            switch byte {
            case 0x22: append(#"\""#)
            case 0x5C: append(#"\\"#)
            case 0x0A: append(#"\n"#)
            case 0x09: append(#"\t"#)
            case 0x0D: append(#"\r"#)
            case 0x08: append(#"\b"#)
            case 0x0C: append(#"\f"#)
            default: appendEscapedByte(byte, prefix: #"\u00"#)
            }
            index += 1
            run = index
        }
        append(UnsafeBufferPointer(rebasing: bytes[run...]))
        append(0x22)
    }

    public func appendJSONString(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { appendJSONString($0) }
    }

    public func appendJSONString(_ string: String) {
        string.withUTF8Bytes { appendJSONString($0) }
    }

    /// Appends `bytes` with C-like escapes and no quotes, so that text output stays one
    /// line per event and cannot drive the terminal: `\n \t \r \" \\`, `\xNN` for other
    /// control bytes, DEL, C1 controls (U+0080–U+009F, which some terminals obey) and bytes
    /// that are not well-formed UTF-8. Other UTF-8 passes through.
    public func appendTextEscaped(_ bytes: UnsafeBufferPointer<UInt8>) {
        var run = 0
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte >= 0x20 && byte < 0x7F && byte != 0x22 && byte != 0x5C {
                index += 1
                continue
            }
            let length = byte >= 0x80 ? utf8SequenceLength(bytes, at: index) : 0
            if length > 0 && !(byte == 0xC2 && bytes[index + 1] < 0xA0) {
                index += length
                continue
            }
            append(UnsafeBufferPointer(rebasing: bytes[run..<index]))
            switch byte {
            case 0x22: append(#"\""#)
            case 0x5C: append(#"\\"#)
            case 0x0A: append(#"\n"#)
            case 0x09: append(#"\t"#)
            case 0x0D: append(#"\r"#)
            default: appendEscapedByte(byte, prefix: #"\x"#)
            }
            index += 1
            run = index
        }
        append(UnsafeBufferPointer(rebasing: bytes[run...]))
    }

    public func appendTextEscaped(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { appendTextEscaped($0) }
    }

    public func appendTextEscaped(_ string: String) {
        string.withUTF8Bytes { appendTextEscaped($0) }
    }
}

extension OutputBuffer {
    /// `850ns`, `7.1us`, `12.0ms`, `3.5s`: the largest unit that keeps the value at 1 or
    /// more, rounded to one decimal.
    public func appendDuration(_ ns: UInt64) {
        if ns < 1000 {
            appendDecimal(ns)
            append("ns")
            return
        }
        for (tenth, unit) in [(UInt64(100), "us"), (100_000, "ms"), (100_000_000, "s")] {
            let (quotient, remainder) = ns.quotientAndRemainder(dividingBy: tenth)
            let tenths = quotient + (remainder * 2 >= tenth ? 1 : 0)
            // Rounding can reach 1000.0 of a unit: that is 1.0 of the next one.
            if tenths < 10_000 || unit == "s" {
                appendDecimal(tenths / 10)
                append(0x2E)
                appendDecimal(tenths % 10)
                append(unit)
                return
            }
        }
    }
}
