import UtapCore

/// Writes the reports of `utap count` and `utap latency`: a table or histograms in text,
/// or one JSON object per probe (and process) per report.
///
/// JSON, keys in this order:
/// `{"type":"count","ts_ns":T,"probe":"libc:malloc","pid":42,"comm":"app","count":1000}`
/// (`pid` and `comm` only with --by-pid) and
/// `{"type":"latency","ts_ns":T,"probe":"f","count":3,"sum_ns":…,"max_ns":…,"p50_ns":…,
/// "p90_ns":…,"p99_ns":…,"buckets":[{"ge_ns":16777216,"lt_ns":33554432,"count":3}]}`
/// where percentiles are upper bounds (the top of their bucket, at most max_ns).
public final class AggregateWriter {
    private let probes: [ProbeDescriptor]
    private let json: Bool
    private let output: OutputBuffer

    public init(probes: [ProbeDescriptor], json: Bool, output: OutputBuffer) {
        self.probes = probes
        self.json = json
        self.output = output
    }

    private func name(_ probe: Int) -> String {
        probes.indices.contains(probe) ? probes[probe].name : ProbeDescriptor.unknown(probe).name
    }

    /// Hit counts, most hits first. With `byPid`, one row per probe and process.
    public func writeCounts(_ aggregates: Aggregates, byPid: Bool, timestampNs: UInt64) throws {
        let rows: [(probe: Int, pid: Int32?, comm: String, count: UInt64)] = byPid
            ? aggregates.processCounts.map { ($0.probe, $0.pid, $0.comm, $0.count) }
            : aggregates.counts.enumerated().map { ($0.offset, nil, "", $0.element) }
        let sorted = rows.sorted { a, b in
            if a.count != b.count { return a.count > b.count }
            if a.probe != b.probe { return name(a.probe) < name(b.probe) }
            return (a.pid ?? 0) < (b.pid ?? 0)
        }
        if json {
            for row in sorted {
                output.append(#"{"type":"count","ts_ns":"#)
                output.appendDecimal(timestampNs)
                output.append(#","probe":"#)
                output.appendJSONString(name(row.probe))
                if let pid = row.pid {
                    output.append(#","pid":"#)
                    output.appendDecimal(Int64(pid))
                    output.append(#","comm":"#)
                    output.appendJSONString(row.comm)
                }
                output.append(#","count":"#)
                output.appendDecimal(row.count)
                output.append("}\n")
            }
        } else {
            let width = max(sorted.map { name($0.probe).utf8.count }.max() ?? 0, 5) + 2
            column("PROBE", width)
            if byPid {
                column("PID", 10)
                column("COMM", 17)
            }
            output.append("COUNT\n")
            for row in sorted {
                column(name(row.probe), width)
                if let pid = row.pid {
                    let start = output.bufferedCount
                    output.appendDecimal(Int64(pid))
                    output.pad(from: start, toWidth: 10)
                    column(row.comm, 17)
                }
                output.appendDecimal(row.count)
                output.append(0x0A)
            }
        }
        try output.flush()
    }

    /// One histogram per probe that saw a return.
    public func writeLatency(_ aggregates: Aggregates, timestampNs: UInt64) throws {
        for (probe, h) in aggregates.histograms.enumerated() {
            if json {
                writeJSONLatency(probe, h, timestampNs)
            } else {
                writeTextLatency(probe, h)
            }
        }
        try output.flush()
    }

    private func writeJSONLatency(_ probe: Int, _ h: LatencyHistogram, _ timestampNs: UInt64) {
        output.append(#"{"type":"latency","ts_ns":"#)
        output.appendDecimal(timestampNs)
        output.append(#","probe":"#)
        output.appendJSONString(name(probe))
        for (key, value) in [("count", h.count), ("sum_ns", h.sumNs), ("max_ns", h.maxNs), ("p50_ns", h.quantile(0.5)),
                             ("p90_ns", h.quantile(0.9)), ("p99_ns", h.quantile(0.99))] {
            output.append(#",""#)
            output.append(key)
            output.append(#"":"#)
            output.appendDecimal(value)
        }
        output.append(#","buckets":["#)
        for (i, row) in h.powerOfTwoRows.enumerated() {
            output.append(i == 0 ? #"{"ge_ns":"# : #",{"ge_ns":"#)
            output.appendDecimal(row.lower)
            output.append(#","lt_ns":"#)
            output.appendDecimal(row.upper)
            output.append(#","count":"#)
            output.appendDecimal(row.count)
            output.append(0x7D)
        }
        output.append("]}\n")
    }

    /// Like BCC's funclatency: a summary line, then one row per power of two with a bar.
    private func writeTextLatency(_ probe: Int, _ h: LatencyHistogram) {
        output.append(name(probe))
        output.append(": count=")
        output.appendDecimal(h.count)
        if h.count > 0 {
            for (label, ns) in [("avg", h.sumNs / h.count), ("p50", h.quantile(0.5)), ("p90", h.quantile(0.9)),
                                ("p99", h.quantile(0.99)), ("max", h.maxNs)] {
                output.append("  ")
                output.append(label)
                output.append(0x3D)
                output.appendDuration(ns)
            }
        }
        output.append(0x0A)
        let rows = h.powerOfTwoRows
        guard let most = rows.map(\.count).max(), most > 0 else { return }
        let header = output.bufferedCount
        output.append("    latency (ns)")
        output.pad(from: header, toWidth: 36)
        output.append("count    distribution\n")
        for row in rows {
            let start = output.bufferedCount
            output.appendSpaces(4)
            output.appendDecimal(row.lower)
            output.append(" -> ")
            output.appendDecimal(row.upper - 1)
            output.pad(from: start, toWidth: 36)
            let countStart = output.bufferedCount
            output.appendDecimal(row.count)
            output.pad(from: countStart, toWidth: 9)
            let bar = Int((row.count * 40 + most - 1) / most)
            output.append(0x7C)
            for i in 0..<40 { output.append(i < bar ? 0x2A : 0x20) }
            output.append("|\n")
        }
    }

    private func column(_ text: String, _ width: Int) {
        let start = output.bufferedCount
        output.appendTextEscaped(text)
        output.pad(from: start, toWidth: width)
    }
}
