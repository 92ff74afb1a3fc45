import Glibc

/// A value shared between threads, reached only under a pthread mutex.
///
/// Not the standard library's `Mutex`: on Linux that one locks with futexes and atomics
/// that ThreadSanitizer cannot see, so every access it guards was reported as a race and
/// real races would have hidden among them. ThreadSanitizer understands pthread mutexes.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
