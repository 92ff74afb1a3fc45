import UtapCore

/// Writes a session's records in one output format. The CLI feeds it the events the
/// engines produce, so neither the engines nor the run loop know which format is in use.
public protocol EventWriter: AnyObject {
    func write(_ event: Event) throws
    /// Writes exactly what `write(event.event)` writes; the writers here format it in
    /// place, without building the `Event`.
    func write(_ event: IntegerEvent) throws
    /// `count` events of probe index `probe` were dropped (ring buffer full, …).
    func lost(probe: Int, count: UInt64) throws
    func summary(_ summary: TraceSummary) throws
    func flush() throws
}

extension EventWriter {
    public func write(_ event: IntegerEvent) throws {
        try write(event.event)
    }
}

/// What writers read from an event, so that one formatting routine serves `Event` and
/// `IntegerEvent` (generic, and specialized for each).
protocol WritableEvent {
    var timestampNs: UInt64 { get }
    var pid: Int32 { get }
    var tid: Int32 { get }
    /// The thread's name as text.
    var commText: String { get }
    /// The thread's name as a key for caches; nil when `commText` is not a name the
    /// kernel could have given (then it is encoded each time).
    var threadName: ThreadName? { get }
    var probe: Int { get }
    var latencyNs: UInt64? { get }
    var stack: [String]? { get }
    var fieldCount: Int { get }
    /// Calls `body` with each field's index and value, in order.
    func forEachField(_ body: (Int, FieldValue) -> Void)
}

extension Event: WritableEvent {
    var fieldCount: Int { fields.count }
    var commText: String { comm }
    var threadName: ThreadName? { ThreadName(exactly: comm) }

    @inline(__always)
    func forEachField(_ body: (Int, FieldValue) -> Void) {
        // Read in place: a subscripted read copies each value (a retain for strings).
        fields.withUnsafeBufferPointer { fields in
            for index in fields.indices { body(index, fields[index]) }
        }
    }
}

extension IntegerEvent: WritableEvent {
    var stack: [String]? { nil }
    var commText: String { comm.string }
    var threadName: ThreadName? { comm }

    @inline(__always)
    func forEachField(_ body: (Int, FieldValue) -> Void) {
        for index in 0..<fieldCount { body(index, field(index)) }
    }
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

/// The constant text a writer prints for each probe (names, field keys), encoded once at
/// start into one block of memory owned by the writer. Appending a piece is a copy out of
/// that block: with a `[UInt8]` per piece, the retain and release of each array were the
/// largest single cost per event (perf, 2M events).
///
/// A probe's pieces are its `fixed` ones (by position, as the writer defines them), then
/// one key per field (`,"name":` or `  name=`). Indexes the session does not know (an
/// engine bug or a stale breakpoint) are encoded on the spot instead of trapping.
final class ProbeTexts {
    private let bytes: UnsafeMutableBufferPointer<UInt8>
    /// Piece i is bytes[pieceStart[i] ..< pieceStart[i + 1]].
    private let pieceStart: UnsafeMutableBufferPointer<Int>
    /// Probe p's pieces are firstPiece[p] ..< firstPiece[p + 1].
    private let firstPiece: UnsafeMutableBufferPointer<Int>
    private let fixedCount: Int
    private let fixed: (ProbeDescriptor) -> [[UInt8]]
    private let key: (String, Int) -> [UInt8]

    /// - Parameters:
    ///   - fixed: a probe's fixed pieces; the same count for every probe.
    ///   - key: the key printed before field `index` named `name`.
    init(_ probes: [ProbeDescriptor], fixed: @escaping (ProbeDescriptor) -> [[UInt8]],
         key: @escaping (String, Int) -> [UInt8]) {
        let pieces = probes.map { probe in
            fixed(probe) + probe.fieldNames.enumerated().map { key($1, $0) }
        }
        self.fixed = fixed
        self.key = key
        fixedCount = fixed(.unknown(0)).count
        firstPiece = .allocate(capacity: probes.count + 1)
        let flat = pieces.flatMap { $0 }
        pieceStart = .allocate(capacity: flat.count + 1)
        bytes = .allocate(capacity: max(flat.reduce(0) { $0 + $1.count }, 1))
        var pieceCount = 0, byteCount = 0
        for (probe, probePieces) in pieces.enumerated() {
            firstPiece[probe] = pieceCount
            for piece in probePieces {
                pieceStart[pieceCount] = byteCount
                _ = UnsafeMutableBufferPointer(rebasing: bytes[byteCount...]).initialize(from: piece)
                pieceCount += 1
                byteCount += piece.count
            }
        }
        firstPiece[probes.count] = pieceCount
        pieceStart[pieceCount] = byteCount
    }

    deinit {
        bytes.deallocate()
        pieceStart.deallocate()
        firstPiece.deallocate()
    }

    /// Appends fixed piece `index` of `probe`.
    @inline(__always)
    func appendFixed(_ index: Int, probe: Int, to output: OutputBuffer) {
        guard probe >= 0, probe < firstPiece.count - 1 else {
            return output.append(fixed(.unknown(probe))[index])
        }
        appendPiece(firstPiece[probe] + index, to: output)
    }

    /// Appends the key of field `field` of `probe`.
    @inline(__always)
    func appendKey(_ field: Int, probe: Int, to output: OutputBuffer) {
        let piece = probe >= 0 && probe < firstPiece.count - 1 ? firstPiece[probe] + fixedCount + field : -1
        guard piece >= 0, field >= 0, piece < firstPiece[probe + 1] else {
            return output.append(key(unnamedFieldName(field), field))
        }
        appendPiece(piece, to: output)
    }

    @inline(__always)
    private func appendPiece(_ piece: Int, to output: OutputBuffer) {
        let start = pieceStart[piece]
        output.appendShort(UnsafeBufferPointer(rebasing: bytes[start..<pieceStart[piece + 1]]))
    }
}
