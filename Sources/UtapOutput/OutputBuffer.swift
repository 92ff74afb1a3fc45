import Glibc
import UtapCore

/// Why output could not be written. Errors are sticky: once a stream fails, every later
/// flush throws the same error and discards what was buffered (counted in
/// `OutputBuffer.unwrittenBytes`), because a stream with a hole in it is worse than one
/// that stops.
public enum OutputError: Error, Equatable, CustomStringConvertible {
    /// The reader went away (EPIPE, e.g. `utap trace … | head -1`): the caller should
    /// stop tracing quietly, as any filter in a pipeline does.
    case brokenPipe
    /// write(2) failed with this errno (ENOSPC, EIO, EBADF, …).
    case writeFailed(errno: Int32)
    /// A stop came while the reader was not reading (`givesUpWhen`): the rest was dropped.
    case stalled

    public var description: String {
        switch self {
        case .brokenPipe:
            return "write output: the reader closed the pipe"
        case .writeFailed(let code):
            return "write output: \(String(cString: strerror(code)))"
        case .stalled:
            return "write output: the reader stopped reading"
        }
    }
}

/// A buffered writer over a file descriptor, with allocation-free appenders for the
/// pieces events are made of (bytes, decimal and hex numbers, escaped strings).
///
/// Appending never fails and never writes; `flushIfFull()` (called by the writers at the
/// end of each record) writes once more than `flushThreshold` bytes are buffered, so
/// write(2) is called about once per 64 KiB and always at a record boundary.
/// Not thread-safe: one owner writes.
public final class OutputBuffer {
    /// Buffered bytes above which `flushIfFull()` writes.
    public static let flushThreshold = 64 * 1024

    /// The buffer, managed by hand and reached through a `let` pointer: measured, an
    /// `[UInt8]` in a stored `var` cost a dynamic exclusivity check on every access and
    /// Array's generic append path, together most of the time per event.
    private struct Storage {
        var bytes: UnsafeMutablePointer<UInt8>
        var count: Int
        var capacity: Int
    }

    private let fd: Int32
    private let ownsFD: Bool
    private let storage: UnsafeMutablePointer<Storage>
    private var failure: OutputError?

    /// Bytes that were appended but never reached the fd because a write failed.
    public private(set) var unwrittenBytes: UInt64 = 0

    /// Asked when a write is interrupted (by a signal: EINTR, or a partial write): true
    /// gives up the rest (`OutputError.stalled`) instead of writing on, which blocks as
    /// long as the reader does not read.
    public var givesUpWhen: (() -> Bool)?
    /// CLOCK_MONOTONIC time a flush began or last got bytes written: how long the reader
    /// has kept the output waiting.
    public private(set) var lastProgressNs: UInt64 = 0

    /// - Parameters:
    ///   - fd: where to write; stays open after the buffer is gone unless `ownsFD`.
    ///   - ownsFD: close `fd` in deinit.
    public convenience init(fd: Int32, ownsFD: Bool) {
        // Headroom above the threshold so the record that crosses it does not regrow.
        self.init(fd: fd, ownsFD: ownsFD, capacity: Self.flushThreshold + 16 * 1024)
    }

    private init(fd: Int32, ownsFD: Bool, capacity: Int) {
        self.fd = fd
        self.ownsFD = ownsFD
        storage = .allocate(capacity: 1)
        storage.initialize(to: Storage(bytes: .allocate(capacity: capacity), count: 0,
                                       capacity: capacity))
    }

    /// The bytes `body` appends, for encoding constant text (probe names, keys) once.
    static func encode(_ body: (OutputBuffer) -> Void) -> [UInt8] {
        let scratch = OutputBuffer(fd: -1, ownsFD: false, capacity: 64)
        body(scratch)
        defer { scratch.storage.pointee.count = 0 }
        return Array(scratch.buffered)
    }

    deinit {
        // Best effort: whoever cared about errors flushed already.
        try? flush()
        if ownsFD { close(fd) }
        storage.pointee.bytes.deallocate()
        storage.deallocate()
    }

    /// Bytes appended and not yet written.
    public var bufferedCount: Int { storage.pointee.count }

    private var buffered: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: storage.pointee.bytes, count: storage.pointee.count)
    }

    /// Writes everything buffered, retrying on EINTR and partial writes.
    public func flush() throws(OutputError) {
        if let failure {
            discardBuffered(from: 0)
            throw failure
        }
        let bytes = buffered
        var written = 0
        lastProgressNs = monotonicNow()
        while written < bytes.count {
            let n = write(fd, bytes.baseAddress! + written, bytes.count - written)
            if n >= 0 {
                written += n
                if n > 0 { lastProgressNs = monotonicNow() }
                if written < bytes.count, givesUpWhen?() == true { return try fail(.stalled, written: written) }
                continue
            }
            switch errno {
            case EINTR:
                if givesUpWhen?() == true { return try fail(.stalled, written: written) }
                continue
            case EAGAIN:
                // An inherited stdout may be non-blocking; wait rather than lose output.
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&pfd, 1, -1)
            case EPIPE:
                return try fail(.brokenPipe, written: written)
            case let code:
                return try fail(.writeFailed(errno: code), written: written)
            }
        }
        storage.pointee.count = 0
    }

    /// Flushes when more than `flushThreshold` bytes are buffered.
    @inline(__always)
    public func flushIfFull() throws(OutputError) {
        if storage.pointee.count > Self.flushThreshold { try flush() }
    }

    private func fail(_ error: OutputError, written: Int) throws(OutputError) {
        failure = error
        discardBuffered(from: written)
        throw error
    }

    private func discardBuffered(from written: Int) {
        unwrittenBytes += UInt64(storage.pointee.count - written)
        storage.pointee.count = 0
    }

    // MARK: Appenders

    /// Room for `count` more bytes: where to write them. `commit` makes them part of the
    /// buffer.
    @inline(__always)
    func reserve(_ count: Int) -> UnsafeMutablePointer<UInt8> {
        if storage.pointee.capacity - storage.pointee.count < count { grow(count) }
        return storage.pointee.bytes + storage.pointee.count
    }

    @inline(__always)
    func commit(_ count: Int) {
        storage.pointee.count += count
    }

    /// Copies `count` buffered bytes starting at `start` (a `bufferedCount` taken before
    /// appending them) to `destination`.
    @inline(__always)
    func copyBuffered(from start: Int, count: Int, to destination: UnsafeMutablePointer<UInt8>) {
        destination.update(from: storage.pointee.bytes + start, count: count)
    }

    /// Only a record larger than the headroom (a deep stack) gets here.
    @inline(never)
    private func grow(_ count: Int) {
        let capacity = max(storage.pointee.capacity * 2, storage.pointee.count + count)
        let bytes = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        bytes.update(from: storage.pointee.bytes, count: storage.pointee.count)
        storage.pointee.bytes.deallocate()
        storage.pointee.bytes = bytes
        storage.pointee.capacity = capacity
    }

    @inline(__always)
    public func append(_ byte: UInt8) {
        reserve(1).pointee = byte
        commit(1)
    }

    @inline(__always)
    public func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let source = bytes.baseAddress else { return }
        reserve(bytes.count).update(from: source, count: bytes.count)
        commit(bytes.count)
    }

    /// Appends `bytes`; a piece of 4 to 16 bytes (a field's key, mostly) with two
    /// overlapping word moves instead of a call to memmove, which cost more than the copy
    /// (callgrind).
    @inline(__always)
    func appendShort(_ bytes: UnsafeBufferPointer<UInt8>) {
        let count = bytes.count
        guard count >= 4, count <= 16, let source = bytes.baseAddress else { return append(bytes) }
        let from = UnsafeRawPointer(source), to = UnsafeMutableRawPointer(reserve(count))
        if count >= 8 {
            to.storeBytes(of: from.loadUnaligned(as: UInt64.self), as: UInt64.self)
            to.storeBytes(of: from.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self), toByteOffset: count - 8, as: UInt64.self)
        } else {
            to.storeBytes(of: from.loadUnaligned(as: UInt32.self), as: UInt32.self)
            to.storeBytes(of: from.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self), toByteOffset: count - 4, as: UInt32.self)
        }
        commit(count)
    }

    @inline(__always)
    public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { append($0) }
    }

    /// Appends a literal's UTF-8: a pointer and a length, where a String literal went
    /// through String's UTF-8 view on every event.
    @inline(__always)
    public func append(_ literal: StaticString) {
        append(UnsafeBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    /// Appends the string's UTF-8 as is (no escaping), for trusted text. Disfavoured, so
    /// that literals take the StaticString path.
    @_disfavoredOverload
    @inline(__always)
    public func append(_ string: String) {
        string.withUTF8Bytes { append($0) }
    }

    /// Appends `count` spaces.
    @inline(__always)
    public func appendSpaces(_ count: Int) {
        guard count > 0 else { return }
        reserve(count).update(repeating: 0x20, count: count)
        commit(count)
    }

    /// Pads with spaces the text appended since `start` (a `bufferedCount` taken before
    /// it) to `width` bytes: a left-aligned column.
    @inline(__always)
    public func pad(from start: Int, toWidth width: Int) {
        appendSpaces(width - (storage.pointee.count - start))
    }
}

extension String {
    /// Calls `body` with the string's UTF-8; native Swift strings are contiguous, so this
    /// does not allocate.
    @inline(__always)
    func withUTF8Bytes<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        if let result = utf8.withContiguousStorageIfAvailable(body) { return result }
        return Array(utf8).withUnsafeBufferPointer(body)
    }
}
