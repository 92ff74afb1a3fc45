import UtapCore

/// Writes a session's records in one output format. The CLI feeds it the events the
/// engines produce, so neither the engines nor the run loop know which format is in use.
public protocol EventWriter: AnyObject {
    func write(_ event: Event) throws
    /// `count` events of probe index `probe` were dropped (ring buffer full, …).
    func lost(probe: Int, count: UInt64) throws
    func summary(_ summary: TraceSummary) throws
    func flush() throws
}

extension ProbeDescriptor {
    /// Stands in for a probe index the session does not know. Engines never produce one,
    /// but a tracer that crashes can leave breakpoints in its tracee, so writers degrade
    /// instead of trapping.
    static func unknown(_ index: Int) -> ProbeDescriptor {
        ProbeDescriptor(name: "probe#\(index)", kind: .entry, fieldNames: [])
    }
}

/// The name for a field value beyond those its probe names (an engine bug, shown rather
/// than hidden).
func unnamedFieldName(_ index: Int) -> String {
    "field\(index)"
}

/// One line of a summary: the counts of every probe with this name, merged, because two
/// probes of a session may share a display name and a name is a JSON key.
struct SummaryLine {
    var name: String
    var events: UInt64
    var lost: UInt64
}

/// The summary's per-probe counts merged by name, in order of first appearance.
func summaryLines(_ summary: TraceSummary, probes: [ProbeDescriptor]) -> [SummaryLine] {
    var lines: [SummaryLine] = []
    var lineOfName: [String: Int] = [:]
    for index in 0..<max(probes.count, summary.events.count, summary.lost.count) {
        let name = index < probes.count ? probes[index].name : ProbeDescriptor.unknown(index).name
        let events = index < summary.events.count ? summary.events[index] : 0
        let lost = index < summary.lost.count ? summary.lost[index] : 0
        if let line = lineOfName[name] {
            lines[line].events += events
            lines[line].lost += lost
        } else {
            lineOfName[name] = lines.count
            lines.append(SummaryLine(name: name, events: events, lost: lost))
        }
    }
    return lines
}

/// A probe's field keys as a writer prints them (`,"name":` or `  name=`), encoded once at
/// start so an event encodes no names; `key(name, index)` encodes one.
struct FieldKeys {
    private let keys: [[UInt8]]
    private let key: (String, Int) -> [UInt8]

    init(_ names: [String], key: @escaping (String, Int) -> [UInt8]) {
        self.keys = names.enumerated().map { key($1, $0) }
        self.key = key
    }

    func append(_ index: Int, to output: OutputBuffer) {
        output.append(index < keys.count ? keys[index] : key(unnamedFieldName(index), index))
    }
}
