import UtapCore

/// Writes the default human-readable format: a header, then one aligned line per event,
/// `TIME(s) COMM PID/TID PROBE FIELDS... [LATENCY]`, with stack frames on indented lines
/// below it. Loss and the summary go to a separate stream (stderr) so that stdout holds
/// only events.
public final class TextWriter: EventWriter {
    private static let timeWidth = 12
    private static let commWidth = 16
    private static let pidTidWidth = 13

    /// The fixed pieces of a probe's text (see `ProbeTexts`).
    private enum Piece {
        /// The name padded to the probe column, with the separator: used when fields or
        /// latency follow.
        static let paddedName = 0
        /// The name alone: lines do not end in spaces.
        static let name = 1
    }

    private let probes: [ProbeDescriptor]
    private let texts: ProbeTexts
    private let threadTexts = ThreadTextCache()
    private let probeWidth: Int
    private let output: OutputBuffer
    private let summaryOutput: OutputBuffer
    private let startNs: UInt64
    /// Unchecked for exclusivity: read once per event, never overlapping.
    @exclusivity(unchecked) private var wroteHeader = false

    /// - Parameters:
    ///   - summaryOutput: where `lost` lines and the summary go (stderr); nil puts them in
    ///     `output`, since loss is never silent.
    ///   - startNs: CLOCK_MONOTONIC time of the session start, before any probe is
    ///     attached; TIME is seconds since it.
    public init(probes: [ProbeDescriptor], output: OutputBuffer,
                summaryOutput: OutputBuffer? = nil, startNs: UInt64) {
        let longest = probes.map { probe in
            OutputBuffer.encode { $0.appendTextEscaped(probe.name) }.count
        }.max() ?? 0
        let width = max(longest + 2, "PROBE".utf8.count)
        self.probes = probes
        self.probeWidth = width
        self.texts = ProbeTexts(probes, fixed: { probe in
            let name = OutputBuffer.encode { $0.appendTextEscaped(probe.name) }
            return [name + Array(repeating: 0x20, count: max(width - name.count, 0) + 1), name]
        }, key: { name, index in
            OutputBuffer.encode {
                if index > 0 { $0.append("  ") }
                $0.appendTextEscaped(name)
                $0.append(0x3D)
            }
        })
        self.output = output
        self.summaryOutput = summaryOutput ?? output
        self.startNs = startNs
    }

    private func writeHeader() {
        var start = output.bufferedCount
        output.append("TIME(s)")
        output.pad(from: start, toWidth: Self.timeWidth + 1)
        start = output.bufferedCount
        output.append("COMM")
        output.pad(from: start, toWidth: Self.commWidth + 1)
        start = output.bufferedCount
        output.append("PID/TID")
        output.pad(from: start, toWidth: Self.pidTidWidth + 1)
        start = output.bufferedCount
        output.append("PROBE")
        output.pad(from: start, toWidth: probeWidth + 1)
        output.append("FIELDS\n")
    }

    public func write(_ event: Event) throws {
        try write(fieldsOf: event)
    }

    public func write(_ event: IntegerEvent) throws {
        try write(fieldsOf: event)
    }

    @inline(__always)
    private func write<E: WritableEvent>(fieldsOf event: E) throws {
        if !wroteHeader {
            writeHeader()
            wroteHeader = true
        }
        appendTime(event.timestampNs)
        output.append(0x20)

        threadTexts.append(event, probe: 0, to: output) { output in
            var start = output.bufferedCount
            output.appendTextEscaped(event.commText)
            output.pad(from: start, toWidth: Self.commWidth)
            output.append(0x20)

            start = output.bufferedCount
            output.appendDecimal(Int64(event.pid))
            output.append(0x2F)
            output.appendDecimal(Int64(event.tid))
            output.pad(from: start, toWidth: Self.pidTidWidth)
            output.append(0x20)
        }

        let hasTail = event.fieldCount > 0 || event.latencyNs != nil
        texts.appendFixed(hasTail ? Piece.paddedName : Piece.name, probe: event.probe, to: output)
        event.forEachField { index, value in
            texts.appendKey(index, probe: event.probe, to: output)
            append(value)
        }
        if let latency = event.latencyNs {
            output.append(event.fieldCount == 0 ? "latency=" : "  latency=")
            output.appendDuration(latency)
        }
        output.append(0x0A)
        for frame in event.stack ?? [] {
            output.append("    ")
            output.appendTextEscaped(frame)
            output.append(0x0A)
        }
        try output.flushIfFull()
    }

    /// Seconds since the session start with microseconds, right-aligned. Signed, because
    /// an event stamped before the start is a fact worth showing, not hiding.
    private func appendTime(_ timestampNs: UInt64) {
        let delta = Int64(bitPattern: timestampNs &- startNs)
        let micros = delta.magnitude / 1000
        let seconds = micros / 1_000_000
        let width = (delta < 0 ? 1 : 0) + decimalDigitCount(seconds) + 7
        output.appendSpaces(Self.timeWidth - width)
        if delta < 0 { output.append(0x2D) }
        output.appendDecimal(seconds)
        output.append(0x2E)
        output.appendDecimal(micros % 1_000_000, minDigits: 6)
    }

    private func append(_ value: FieldValue) {
        switch value {
        case .signed(let number): output.appendDecimal(number)
        case .unsigned(let number): output.appendDecimal(number)
        case .hex(let number), .pointer(let number): output.appendHex(number)
        case .bool(let flag): output.append(flag ? "true" : "false")
        case .string(let bytes, let truncated):
            output.append(0x22)
            output.appendTextEscaped(bytes)
            output.append(truncated ? "\"..." : "\"")
        case .unreadable(let address):
            output.append("<unreadable ")
            output.appendHex(address)
            output.append(0x3E)
        }
    }

    public func lost(probe index: Int, count: UInt64) throws {
        try outputBeforeSummary()
        summaryOutput.append("utap: lost ")
        summaryOutput.appendDecimal(count)
        summaryOutput.append(" events of ")
        texts.appendFixed(Piece.name, probe: index, to: summaryOutput)
        summaryOutput.append(0x0A)
        try summaryOutput.flush()
    }

    public func summary(_ summary: TraceSummary) throws {
        try outputBeforeSummary()
        summaryOutput.append("utap: ")
        summaryOutput.appendDecimal(summary.totalEvents)
        summaryOutput.append(" events, ")
        summaryOutput.appendDecimal(summary.totalLost)
        summaryOutput.append(" lost\n")
        let lines = summaryLines(summary, probes: probes)
        let nameWidth = lines.map { $0.name.utf8.count }.max() ?? 0
        let eventsWidth = lines.map { decimalDigitCount($0.events) }.max() ?? 0
        for line in lines {
            summaryOutput.append("  ")
            var start = summaryOutput.bufferedCount
            summaryOutput.appendTextEscaped(line.name)
            summaryOutput.pad(from: start, toWidth: nameWidth)
            summaryOutput.append("  events=")
            start = summaryOutput.bufferedCount
            summaryOutput.appendDecimal(line.events)
            summaryOutput.pad(from: start, toWidth: eventsWidth)
            summaryOutput.append(" lost=")
            summaryOutput.appendDecimal(line.lost)
            summaryOutput.append(0x0A)
        }
        try summaryOutput.flush()
    }

    /// Events written before a loss or summary line reach the reader before it, so a
    /// terminal showing both streams tells the story in order.
    /// The events first, where both reach one terminal. A stream that failed (its reader
    /// gone or stuck) keeps its error for the caller's flush: the summary, on its own
    /// stream, is still written.
    private func outputBeforeSummary() throws {
        if summaryOutput !== output { try? output.flush() }
    }

    public func flush() throws {
        try output.flush()
        if summaryOutput !== output { try summaryOutput.flush() }
    }
}
