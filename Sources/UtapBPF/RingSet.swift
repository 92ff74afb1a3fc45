import CUtapSys
import Glibc
import UtapABI
import UtapCore

/// The session's BPF ring buffers, one per CPU, read as one stream.
///
/// Order. Each ring holds the records made on one CPU, in the order they were reserved.
/// A read first takes the time (the watermark), then every ring's producer position, and
/// hands over records oldest first by timestamp among the rings' heads, only those
/// stamped before the watermark; the rest wait for the next read. So the records of one
/// thread come out in the order it made them, even when it moved between CPUs: its
/// earlier record was complete before its later one was stamped, hence before the
/// watermark, hence before any producer position was read. A record still being written
/// (its writer on another CPU, or preempted) is waited for briefly, then ends the read:
/// records of other threads may sit behind it in its ring, and a later record of one of
/// them in another ring must not go first. Between threads the order is by timestamp,
/// except where a thread was preempted between taking its timestamp and reserving its
/// record.
///
/// Layout of a ring (the kernel's, as libbpf reads it): a page holding the consumer
/// position (ours to write), a page holding the producer position, then the data, mapped
/// twice in a row so a record that wraps reads as one piece. Each record starts with an
/// 8-byte header (length with busy and discard bits, page offset) and takes a multiple of
/// 8 bytes. A record holds one or more events (utap_abi.h: a CPU's staged events go in
/// as one record); each is handed over on its own, and the record is consumed after its
/// last one.
final class RingSet {
    struct Ring {
        let consumerPosition: UnsafeMutableRawPointer
        let producerPosition: UnsafeRawPointer
        let data: UnsafeRawPointer
        let mask: UInt64
        /// Our position; published to `consumerPosition` in batches.
        var consumed: UInt64
        var published: UInt64
        /// The producer position read at the start of this read.
        var limit: UInt64 = 0
        /// Where the next event starts in the record at `consumed`.
        var offsetInRecord = 0
        /// The head event and its timestamp, once loaded; nil when the ring has nothing
        /// more to hand over in this read.
        var head: UnsafeRawBufferPointer?
        /// The next record before `limit` is still being written.
        var blocked = false
        var headTimestamp: UInt64 = 0
        /// The head's record: its size and the ring bytes it takes.
        var recordSize = 0
        var recordBytes: UInt64 = 0

        /// A ring laid out at these addresses; `size` is the data size, a power of two.
        init(consumerPosition: UnsafeMutableRawPointer, producerPosition: UnsafeRawPointer,
             data: UnsafeRawPointer, size: Int) {
            self.consumerPosition = consumerPosition
            self.producerPosition = producerPosition
            self.data = data
            mask = UInt64(size - 1)
            consumed = utap_load_acquire_u64(consumerPosition)
            published = consumed
        }
    }

    static let busyBit: UInt32 = 1 << 31
    static let discardBit: UInt32 = 1 << 30
    static let headerBytes: UInt64 = 8
    /// struct utap_event: its header's size, and where it keeps its own size.
    static let eventHeaderBytes = Int(UTAP_EVENT_HEADER_SIZE)
    /// A literal (utap_abi.c asserts it): a computed one was a lazy global, initialised
    /// behind a swift_once call on every event.
    static let eventSizeOffset = 28
    /// Records handed over before the consumer position is published: the producer reads
    /// it on every reserve, so writing it per record moves its cache line per record.
    static let publishEvery = 64
    /// How many times a record still being written is looked at again before the read
    /// gives up on it until the next one (about a µs: a writer on another CPU is done by
    /// then; a preempted one is waited for by the next read).
    static let busyRetries = 1024

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Bytes of each of `rings` rings sharing `totalBytes`: a power of two, at least a page
    /// (the kernel's rules).
    static func ringBytes(totalBytes: Int, rings: Int) -> Int {
        let share = max(totalBytes / max(rings, 1), pageSize)
        return 1 << (Int.bitWidth - 1 - share.leadingZeroBitCount)
    }

    /// The CPUs of a kernel CPU list ("0-3,8,10-11", as in /sys/devices/system/cpu/online);
    /// nil when it is not one.
    static func cpus(inList text: String) -> [Int]? {
        var cpus: [Int] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let low = Int(bounds[0]), let high = Int(bounds[bounds.count - 1]),
                  low >= 0, low <= high, high < 1 << 16 else { return nil }
            cpus += low...high
        }
        return cpus
    }

    /// Behind a pointer: a class's array property costs an exclusivity check and a
    /// uniqueness check at every write, which were most of a record's cost (callgrind).
    private let rings: UnsafeMutableBufferPointer<Ring>
    private let mappings: [(address: UnsafeMutableRawPointer, length: Int)]
    private let epollFD: Int32

    /// Rings at given addresses, without a kernel (tests).
    init(rings: [Ring]) {
        self.rings = RingSet.store(rings)
        mappings = []
        epollFD = -1
    }

    /// Maps the ring buffer maps `fds`, each with `size` bytes of data.
    init(fds: [Int32], size: Int) throws(UtapError) {
        let page = RingSet.pageSize
        var rings: [Ring] = []
        var mappings: [(address: UnsafeMutableRawPointer, length: Int)] = []
        let epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        func fail(_ what: String) -> UtapError {
            let error = UtapError.runtime("cannot \(what) the ring buffer: \(String(cString: strerror(errno)))", hint: nil)
            for m in mappings { munmap(m.address, m.length) }
            if epollFD >= 0 { close(epollFD) }
            return error
        }
        guard epollFD >= 0 else { throw fail("poll") }
        for (index, fd) in fds.enumerated() {
            let consumer = mmap(nil, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            guard let consumer, consumer != MAP_FAILED else { throw fail("map") }
            mappings.append((consumer, page))
            let producerLength = page + 2 * size
            let producer = mmap(nil, producerLength, PROT_READ, MAP_SHARED, fd, off_t(page))
            guard let producer, producer != MAP_FAILED else { throw fail("map") }
            mappings.append((producer, producerLength))
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.u32 = UInt32(index)
            guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 else { throw fail("poll") }
            rings.append(Ring(consumerPosition: consumer, producerPosition: producer,
                              data: producer + page, size: size))
        }
        self.rings = RingSet.store(rings)
        self.mappings = mappings
        self.epollFD = epollFD
    }

    private static func store(_ rings: [Ring]) -> UnsafeMutableBufferPointer<Ring> {
        let buffer = UnsafeMutableBufferPointer<Ring>.allocate(capacity: rings.count)
        _ = buffer.initialize(from: rings)
        return buffer
    }

    deinit {
        rings.deinitialize()
        rings.deallocate()
        for m in mappings { munmap(m.address, m.length) }
        if epollFD >= 0 { close(epollFD) }
    }

    /// Waits up to `timeoutMs` for a producer's wake-up (they wake the reader only when a
    /// ring fills up; see bpf/utap.bpf.c).
    func wait(timeoutMs: Int32) {
        guard epollFD >= 0 else { return }
        // Which rings woke us does not matter: `read` looks at all of them.
        var event = epoll_event()
        _ = epoll_wait(epollFD, &event, 1, timeoutMs)
    }

    /// Hands over the records stamped before `watermark` (all complete ones: `.max`),
    /// oldest first, to `body`, at most `limit` of them; stops after a record for which
    /// `body` returns false. Every record handed over is consumed. Returns how many.
    @inline(__always)
    func read(before watermark: UInt64, limit: Int, _ body: (UnsafeRawBufferPointer) -> Bool) -> Int {
        let first = rings.baseAddress!, end = first + rings.count
        var ring = first
        while ring < end {
            ring.pointee.limit = utap_load_acquire_u64(ring.pointee.producerPosition)
            Self.loadHead(ring)
            ring += 1
        }
        var handed = 0
        var sincePublish = 0
        while handed < limit {
            // The oldest head; with one ring, or one ring left with records, no contest.
            var oldest: UnsafeMutablePointer<Ring>?
            var oldestTimestamp = UInt64.max
            var blocked = false
            ring = first
            while ring < end {
                if ring.pointee.blocked && !Self.awaitHead(ring) { blocked = true }
                if ring.pointee.head != nil && ring.pointee.headTimestamp < oldestTimestamp {
                    oldest = ring
                    oldestTimestamp = ring.pointee.headTimestamp
                }
                ring += 1
            }
            guard !blocked, let oldest, oldestTimestamp < watermark else { break }
            let record = oldest.pointee.head!
            Self.advance(oldest)
            handed += 1
            sincePublish += 1
            if sincePublish == Self.publishEvery {
                publish()
                sincePublish = 0
            }
            if !body(record) { break }
            Self.loadHead(oldest)
        }
        publish()
        return handed
    }

    /// The ring's next event before its limit into `head`, skipping discarded records; nil
    /// when there is none or the next record is still being written.
    @inline(__always)
    private static func loadHead(_ ring: UnsafeMutablePointer<Ring>) {
        ring.pointee.head = nil
        ring.pointee.blocked = false
        while ring.pointee.consumed < ring.pointee.limit {
            let header = ring.pointee.data + Int(ring.pointee.consumed & ring.pointee.mask)
            let length = utap_load_acquire_u32(header)
            if length & busyBit != 0 {
                ring.pointee.blocked = true
                return
            }
            let size = Int(length & ~(busyBit | discardBit))
            let bytes = (UInt64(size) + headerBytes + 7) & ~7
            if length & discardBit != 0 {
                ring.pointee.consumed &+= bytes
                continue
            }
            // The event's own size (struct utap_event), or the rest of the record when it
            // does not hold a plausible one.
            let offset = ring.pointee.offsetInRecord
            let start = header + Int(headerBytes) + offset
            var count = size - offset
            if count >= eventHeaderBytes {
                let declared = Int(start.loadUnaligned(fromByteOffset: eventSizeOffset, as: UInt16.self))
                if declared >= eventHeaderBytes && declared <= count { count = declared }
            }
            let event = UnsafeRawBufferPointer(start: start, count: count)
            ring.pointee.head = event
            ring.pointee.recordSize = size
            ring.pointee.recordBytes = bytes
            // Every utap event starts with its timestamp (utap_abi.h, struct utap_event).
            ring.pointee.headTimestamp = count >= 8 ? event.loadUnaligned(as: UInt64.self) : 0
            return
        }
    }

    /// Moves past the head event: to the next event of its record, or past the record when
    /// what is left of it cannot hold one (padding).
    @inline(__always)
    private static func advance(_ ring: UnsafeMutablePointer<Ring>) {
        let next = ring.pointee.offsetInRecord + ring.pointee.head!.count
        if next + eventHeaderBytes <= ring.pointee.recordSize {
            ring.pointee.offsetInRecord = next
        } else {
            ring.pointee.consumed &+= ring.pointee.recordBytes
            ring.pointee.offsetInRecord = 0
        }
    }

    /// Looks again at a blocked ring's next record, up to `busyRetries` times; whether it
    /// was completed.
    @inline(never)
    private static func awaitHead(_ ring: UnsafeMutablePointer<Ring>) -> Bool {
        for _ in 0..<busyRetries {
            loadHead(ring)
            if !ring.pointee.blocked { return true }
        }
        return false
    }

    private func publish() {
        for i in rings.indices where rings[i].published != rings[i].consumed {
            utap_store_release_u64(rings[i].consumerPosition, rings[i].consumed)
            rings[i].published = rings[i].consumed
        }
    }
}
