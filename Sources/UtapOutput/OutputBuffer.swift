import Glibc

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

    public var description: String {
        switch self {
        case .brokenPipe:
            return "write output: the reader closed the pipe"
        case .writeFailed(let code):
            return "write output: \(String(cString: strerror(code)))"
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

    private let fd: Int32
    private let ownsFD: Bool
    /// The bytes, behind a pointer because a stored `var` of a class pays a dynamic
    /// exclusivity check on every access: a third of the time per event when measured.
    private let storage: UnsafeMutablePointer<[UInt8]>
    private var failure: OutputError?

    /// Bytes that were appended but never reached the fd because a write failed.
    public private(set) var unwrittenBytes: UInt64 = 0

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
        storage.initialize(to: [])
        storage.pointee.reserveCapacity(capacity)
    }

    @inline(__always)
    private var buffer: [UInt8] {
        _read { yield storage.pointee }
        _modify { yield &storage.pointee }
    }

    /// The bytes `body` appends, for encoding constant text (probe names, keys) once.
    static func encode(_ body: (OutputBuffer) -> Void) -> [UInt8] {
        let scratch = OutputBuffer(fd: -1, ownsFD: false, capacity: 64)
        body(scratch)
        defer { scratch.buffer.removeAll() }
        return scratch.buffer
    }

    deinit {
        // Best effort: whoever cared about errors flushed already.
        try? flush()
        if ownsFD { close(fd) }
        storage.deinitialize(count: 1)
        storage.deallocate()
    }

    /// Bytes appended and not yet written.
    public var bufferedCount: Int { buffer.count }

    /// Writes everything buffered, retrying on EINTR and partial writes.
    public func flush() throws(OutputError) {
        if let failure {
            discardBuffered(from: 0)
            throw failure
        }
        var written = 0
        while written < buffer.count {
            let n = buffer.withUnsafeBytes { raw in
                write(fd, raw.baseAddress! + written, raw.count - written)
            }
            if n >= 0 {
                written += n
                continue
            }
            switch errno {
            case EINTR:
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
        buffer.removeAll(keepingCapacity: true)
    }

    /// Flushes when more than `flushThreshold` bytes are buffered.
    @inline(__always)
    public func flushIfFull() throws(OutputError) {
        if buffer.count > Self.flushThreshold { try flush() }
    }

    private func fail(_ error: OutputError, written: Int) throws(OutputError) {
        failure = error
        discardBuffered(from: written)
        throw error
    }

    private func discardBuffered(from written: Int) {
        unwrittenBytes += UInt64(buffer.count - written)
        buffer.removeAll(keepingCapacity: true)
    }

    // MARK: Appenders

    @inline(__always)
    public func append(_ byte: UInt8) {
        buffer.append(byte)
    }

    @inline(__always)
    public func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        buffer.append(contentsOf: bytes)
    }

    @inline(__always)
    public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { append($0) }
    }

    /// Appends the string's UTF-8 as is (no escaping): for literals and trusted text.
    @inline(__always)
    public func append(_ string: String) {
        string.withUTF8Bytes { append($0) }
    }

    /// Appends `count` spaces.
    @inline(__always)
    public func appendSpaces(_ count: Int) {
        if count > 0 { buffer.append(contentsOf: repeatElement(0x20, count: count)) }
    }

    /// Pads with spaces the text appended since `start` (a `bufferedCount` taken before
    /// it) to `width` bytes: a left-aligned column.
    @inline(__always)
    public func pad(from start: Int, toWidth width: Int) {
        appendSpaces(width - (buffer.count - start))
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
