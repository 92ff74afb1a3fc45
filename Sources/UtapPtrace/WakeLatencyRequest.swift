import Glibc

/// A request to the kernel that idle CPUs wake at once (CPU latency QoS through
/// /dev/cpu_dma_latency, the interface cyclictest and tuned use): at 0 µs an idle CPU polls
/// instead of halting, so a thread woken on it starts without waiting for the CPU.
///
/// Why the tracer wants it: after each hit, PTRACE_CONT wakes the traced thread on its
/// CPU, which sat idle while the thread was stopped; a halted CPU, a virtual one above all,
/// takes tens of µs to come back. Measured here (a KVM guest, 2 vCPUs): an emulated hit
/// cost 31-35 µs without the request and 10 µs with it.
///
/// Its cost is power: while held, every idle CPU of the machine polls. The engine holds it
/// only while hits come back to back (two stops in a row within the tracer's poll) and
/// lets go as soon as a poll ends empty. The kernel drops a request when its file
/// closes, so no way utap can end, SIGKILL included, leaves it behind. Without the device
/// or the permission (a container, an unprivileged tracer) there is no request and nothing
/// else changes.
final class WakeLatencyRequest {
    private let fd: Int32
    private(set) var isHeld = false

    /// The kernel's value for "no constraint" (PM_QOS_CPU_LATENCY_DEFAULT_VALUE, in µs).
    static let noConstraint: Int32 = 2_000_000_000

    /// The kernel's CPU latency QoS device.
    static let device = "/dev/cpu_dma_latency"

    init(path: String = device) {
        // Opening alone adds a request at the default value, which constrains nothing.
        fd = open(path, O_WRONLY | O_CLOEXEC)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    var isAvailable: Bool { fd >= 0 }

    func hold() {
        guard fd >= 0, !isHeld else { return }
        isHeld = set(microseconds: 0)
    }

    func release() {
        guard isHeld else { return }
        _ = set(microseconds: Self.noConstraint)
        isHeld = false
    }

    private func set(microseconds: Int32) -> Bool {
        var value = microseconds
        return withUnsafeBytes(of: &value) { write(fd, $0.baseAddress, $0.count) } == MemoryLayout<Int32>.size
    }
}
