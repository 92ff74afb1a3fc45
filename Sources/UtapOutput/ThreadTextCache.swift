import UtapCore

/// The text a writer prints for an event's thread (pid, tid and comm, formatted and
/// escaped), and whatever follows it that depends only on the probe, kept per thread and
/// probe: events of one thread mostly follow each other, and encoding two decimals and an
/// escaped name was a fifth of the reader's instructions per event (callgrind).
/// Direct-mapped by tid and probe; a slot holds its bytes in one block owned by the cache,
/// so a hit is a comparison and a copy, with no reference counting.
final class ThreadTextCache {
    private struct Slot {
        var pid: Int32 = 0
        var tid: Int32 = -1
        var probe = -1
        var name = ThreadName(low: 0, high: 0)
        var count = 0
    }

    private static let slots = 64
    /// Longer text (a comm full of escapes, a long probe name) is encoded each time instead.
    private static let slotBytes = 256

    private let slot: UnsafeMutablePointer<Slot>
    private let bytes: UnsafeMutablePointer<UInt8>

    init() {
        slot = .allocate(capacity: Self.slots)
        slot.initialize(repeating: Slot(), count: Self.slots)
        bytes = .allocate(capacity: Self.slots * Self.slotBytes)
    }

    deinit {
        slot.deinitialize(count: Self.slots)
        slot.deallocate()
        bytes.deallocate()
    }

    /// Appends the thread's text: the cached bytes when this thread's pid, tid and comm and
    /// `probe` are those last encoded in their slot, else what `encode` appends (kept for
    /// next time). `probe` is what the text depends on besides the thread: the event's
    /// probe when `encode` writes probe text too, else a constant.
    @inline(__always)
    func append<E: WritableEvent>(_ event: E, probe: Int, to output: OutputBuffer, encode: (OutputBuffer) -> Void) {
        // Two probes of one thread (an entry and its return) take different slots.
        let index = Int((UInt32(bitPattern: event.tid) &+ UInt32(truncatingIfNeeded: probe) &* 7) % UInt32(Self.slots))
        let cached = slot + index
        let text = bytes + index * Self.slotBytes
        let name = event.threadName
        if cached.pointee.tid == event.tid, cached.pointee.probe == probe, cached.pointee.pid == event.pid,
           cached.pointee.name == name {
            return output.append(UnsafeBufferPointer(start: text, count: cached.pointee.count))
        }
        let start = output.bufferedCount
        encode(output)
        let count = output.bufferedCount - start
        guard count <= Self.slotBytes, let name else {
            cached.pointee.tid = -1
            return
        }
        output.copyBuffered(from: start, count: count, to: text)
        cached.pointee = Slot(pid: event.pid, tid: event.tid, probe: probe, name: name, count: count)
    }
}
