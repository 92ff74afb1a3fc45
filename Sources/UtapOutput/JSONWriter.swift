import UtapCore

/// Writes JSON Lines (`--format json`): one object per event, `lost` record and summary,
/// keys in the order DESIGN.md fixes, so consumers may rely on it.
public final class JSONWriter: EventWriter {
    /// The fixed pieces of a probe's text (see `ProbeTexts`).
    private enum Piece {
        /// `"probe":"NAME","kind":"KIND","fields":{`
        static let prefix = 0
        /// `"NAME"`, for lost records.
        static let quotedName = 1
    }

    private let probes: [ProbeDescriptor]
    private let texts: ProbeTexts
    private let threadTexts = ThreadTextCache()
    private let timestamps = TimestampDecimals()
    private let output: OutputBuffer

    public init(probes: [ProbeDescriptor], output: OutputBuffer) {
        self.probes = probes
        self.texts = ProbeTexts(probes, fixed: { probe in
            [OutputBuffer.encode {
                $0.append(#""probe":"#)
                $0.appendJSONString(probe.name)
                $0.append(#","kind":""#)
                $0.append(probe.kind.rawValue)
                $0.append(#"","fields":{"#)
            }, OutputBuffer.encode { $0.appendJSONString(probe.name) }]
        }, key: { name, index in
            OutputBuffer.encode {
                if index > 0 { $0.append(0x2C) }
                $0.appendJSONString(name)
                $0.append(0x3A)
            }
        })
        self.output = output
    }

    public func write(_ event: Event) throws {
        try write(fieldsOf: event)
    }

    public func write(_ event: IntegerEvent) throws {
        try write(fieldsOf: event)
    }

    @inline(__always)
    private func write<E: WritableEvent>(fieldsOf event: E) throws {
        output.append(#"{"type":"event","ts_ns":"#)
        timestamps.append(event.timestampNs, to: output)
        threadTexts.append(event, probe: event.probe, to: output) { output in
            output.append(#","pid":"#)
            output.appendDecimal(Int64(event.pid))
            output.append(#","tid":"#)
            output.appendDecimal(Int64(event.tid))
            output.append(#","comm":"#)
            output.appendJSONString(event.commText)
            output.append(0x2C)
            texts.appendFixed(Piece.prefix, probe: event.probe, to: output)
        }
        event.forEachField { index, value in
            texts.appendKey(index, probe: event.probe, to: output)
            append(value)
        }
        output.append(0x7D)
        if let latency = event.latencyNs {
            output.append(#","latency_ns":"#)
            output.appendDecimal(latency)
        }
        if let stack = event.stack {
            output.append(#","stack":["#)
            for (index, frame) in stack.enumerated() {
                if index > 0 { output.append(0x2C) }
                output.appendJSONString(frame)
            }
            output.append(0x5D)
        }
        output.append("}\n")
        try output.flushIfFull()
    }

    private func append(_ value: FieldValue) {
        switch value {
        case .signed(let number): output.appendDecimal(number)
        case .unsigned(let number): output.appendDecimal(number)
        case .hex(let number), .pointer(let number):
            output.append(0x22)
            output.appendHex(number)
            output.append(0x22)
        case .bool(let flag): output.append(flag ? "true" : "false")
        // Truncation is not marked: the value is what was read, and a marker inside the
        // string would be indistinguishable from the target's bytes.
        case .string(let bytes, _): output.appendJSONString(bytes)
        case .unreadable: output.append("null")
        }
    }

    public func lost(probe index: Int, count: UInt64) throws {
        output.append(#"{"type":"lost","probe":"#)
        texts.appendFixed(Piece.quotedName, probe: index, to: output)
        output.append(#","count":"#)
        output.appendDecimal(count)
        output.append("}\n")
        try output.flushIfFull()
    }

    public func summary(_ summary: TraceSummary) throws {
        output.append(#"{"type":"summary","events":"#)
        output.appendDecimal(summary.totalEvents)
        output.append(#","lost":"#)
        output.appendDecimal(summary.totalLost)
        output.append(#","probes":{"#)
        for (index, line) in summaryLines(summary, probes: probes).enumerated() {
            if index > 0 { output.append(0x2C) }
            output.appendJSONString(line.name)
            output.append(#":{"events":"#)
            output.appendDecimal(line.events)
            output.append(#","lost":"#)
            output.appendDecimal(line.lost)
            output.append(0x7D)
        }
        output.append("}}\n")
        try output.flushIfFull()
    }

    public func flush() throws {
        try output.flush()
    }
}
