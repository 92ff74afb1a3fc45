import CUtapSys
import Glibc
import UtapCore

/// A running process under `PTRACE_SEIZE`, every thread of it, with int3 breakpoints written
/// into its text (ptrace-xol.md §0): one address space, as the engine sees it.
///
/// Seize, write and remove breakpoints, read and write memory, detach. The event loop is
/// `PtraceEngine` (Engine.swift), which also keeps its per-process state here (sites,
/// out-of-line pages, semaphores) and detaches by itself. Used alone, a thread that
/// executes a breakpoint stays in a SIGTRAP signal-delivery-stop until `detach()`, which
/// moves its rip back onto the breakpoint's address (restored) and resumes it with no signal,
/// and a thread that clones, forks or execs stays in that ptrace-stop until the next call that
/// waits on it (`detach()`, or a `PTRACE_POKETEXT` fallback).
///
/// **One tracer thread.** Linux accepts ptrace requests only from the thread that attached
/// (and `ptrace_access_vm` the same for text writes): every call, including the last release
/// that runs `deinit`, must come from the thread that created the object. Calls from another
/// thread trap (precondition).
///
/// Waits are per thread id (`waitpid(tid, …, __WALL)`), never `waitpid(-1)`, so that other
/// children of the tracer are not reaped by accident. Do not let anything else in the tracer
/// wait on the target's pid while it is seized (Foundation's `Process` does): a ptrace-stop is
/// reported to every thread of the tracer and could be consumed there.
public final class TracedProcess {
    public let pid: Int32
    /// Thread ids currently seized by this object.
    public private(set) var threads: Set<Int32> = []
    /// Breakpoints in place: runtime address → original byte.
    public private(set) var breakpoints: [UInt64: UInt8] = [:]
    /// Fork/vfork children auto-attached through TRACEFORK/TRACEVFORK; detached by `detach()`.
    public private(set) var forkedChildren: Set<Int32> = []
    /// False once `detach()` ran.
    public private(set) var isAttached = false
    /// Addresses of breakpoints removed while attached: a thread may still report the int3
    /// it executed there before the removal (ptrace-xol.md §1a step 2), and is then moved
    /// back onto the address (rip = address) with no signal.
    public private(set) var retiredBreakpoints: Set<UInt64> = []

    private let owner = pthread_self()
    private var memFD: Int32 = -1
    private let memoryAccess: MemoryAccess

    // State of the ptrace engine (Engine.swift) for this address space.
    /// Breakpoint sites by runtime address.
    var sites: [UInt64: Site] = [:]
    /// Out-of-line pages injected into the process.
    var outOfLinePages: [OutOfLinePage] = []
    /// Natively run stubs: stub address → (probe address, instruction length).
    var stubs: [UInt64: (UInt64, Int)] = [:]
    /// USDT semaphores utap raised: address → amount, taken back at detach.
    var semaphores: [UInt64: UInt16] = [:]
    /// A thread the engine holds in a ptrace-stop right now: PTRACE_PEEK/POKE go through
    /// it instead of interrupting one.
    var stoppedThread: Int32?

    /// How memory is read and written.
    public enum MemoryAccess: Sendable {
        /// pread/pwrite on /proc/PID/mem, falling back to PTRACE_PEEKTEXT/POKETEXT when the
        /// kernel refuses (e.g. `proc_mem.force_override=never`).
        case procMem
        /// PTRACE_PEEKTEXT/POKETEXT only, each access briefly interrupting one thread (tests
        /// use it to exercise the fallback).
        case ptraceOnly
    }

    /// Seizes every thread of `pid`: scans `/proc/PID/task` until two passes in a row find
    /// nothing new. Refuses a process already traced by someone else, naming its TracerPid.
    ///
    /// `killOnExit`: PTRACE_O_EXITKILL, for a process utap started (it dies with utap
    /// rather than run on with breakpoints nobody handles).
    public init(pid: Int32, memoryAccess: MemoryAccess = .procMem, killOnExit: Bool = false) throws(UtapError) {
        self.pid = pid
        self.memoryAccess = memoryAccess
        self.killOnExit = killOnExit
        let tracer = Self.tracerPid(pid)
        guard let tracer else { throw .runtime("pid \(pid): no such process") }
        if tracer != 0 { throw Self.alreadyTraced(pid, by: tracer) }
        isAttached = true
        do throws(UtapError) {
            var quietPasses = 0
            while quietPasses < 2 {
                var foundNew = false
                for tid in try Self.taskIDs(pid) where !threads.contains(tid) {
                    if try seize(tid) { foundNew = true }
                }
                quietPasses = foundNew ? 0 : quietPasses + 1
            }
            guard !threads.isEmpty else { throw UtapError.runtime("pid \(pid): no such process") }
            openMemory()
        } catch {
            detach()
            throw error
        }
    }

    /// A fork child, auto-attached through TRACEFORK: its memory is a copy of `parent`'s,
    /// with the same breakpoints and out-of-line pages.
    init(forkOf parent: TracedProcess, pid: Int32) {
        self.pid = pid
        memoryAccess = parent.memoryAccess
        killOnExit = parent.killOnExit
        threads = [pid]
        breakpoints = parent.breakpoints
        sites = parent.sites
        outOfLinePages = parent.outOfLinePages
        stubs = parent.stubs
        semaphores = parent.semaphores
        isAttached = true
        openMemory()
    }

    private let killOnExit: Bool

    deinit {
        detach()
    }

    /// No memFD is not fatal: every access falls back to PTRACE_PEEK/POKE.
    private func openMemory() {
        if memFD >= 0 { close(memFD) }
        memFD = memoryAccess == .procMem ? open("/proc/\(pid)/mem", O_RDWR | O_CLOEXEC) : -1
    }

    // MARK: breakpoints

    /// Writes int3 (0xCC) at `address` after checking that the byte there is `original` (the
    /// byte the ELF file has at that address). Refuses, writing nothing, when it differs
    /// (code changed, or already 0xCC: another tool's or a stale breakpoint).
    public func insertBreakpoint(at address: UInt64, expecting original: UInt8) throws(UtapError) {
        checkThread()
        guard isAttached else { throw .runtime("pid \(pid): not attached") }
        if breakpoints[address] != nil {
            throw .runtime("pid \(pid): \(hex(address)): a breakpoint is already there")
        }
        let current = try read(address, count: 1)[0]
        guard current == original else {
            if current == 0xCC {
                throw .runtime("pid \(pid): \(hex(address)): memory already holds int3 (0xcc), expected \(hex(original))",
                               hint: "another debugger's breakpoint, or a stale one left by a killed tracer")
            }
            throw .runtime("pid \(pid): \(hex(address)): memory holds \(hex(current)), the file \(hex(original))",
                           hint: "the code in memory differs from the file (modified, or another file)")
        }
        try writeByte(0xCC, at: address)
        breakpoints[address] = original
        let back = try read(address, count: 1)[0]
        guard back == 0xCC else {
            breakpoints[address] = nil
            throw .runtime("pid \(pid): \(hex(address)): int3 write did not stick (reads \(hex(back)))")
        }
    }

    /// Restores the original byte at `address`, only if memory still holds 0xCC. The
    /// breakpoint is forgotten either way.
    public func removeBreakpoint(at address: UInt64) throws(UtapError) {
        checkThread()
        guard let original = breakpoints[address] else {
            throw .runtime("pid \(pid): \(hex(address)): no breakpoint there")
        }
        breakpoints[address] = nil
        retiredBreakpoints.insert(address)
        let current = try read(address, count: 1)[0]
        guard current == 0xCC else {
            throw .runtime("pid \(pid): \(hex(address)): expected int3 (0xcc), memory holds \(hex(current)); left as is")
        }
        try writeByte(original, at: address)
    }

    // MARK: memory

    /// `count` bytes of the target's memory at `address` (through /proc/PID/mem, else
    /// PTRACE_PEEKDATA). Throws when any of it cannot be read.
    public func read(_ address: UInt64, count: Int) throws(UtapError) -> [UInt8] {
        checkThread()
        guard isAttached else { throw .runtime("pid \(pid): not attached") }
        guard count > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: count)
        if memFD >= 0 {
            var filled = 0
            var failure: Int32 = 0
            while filled < count {
                let got = buffer.withUnsafeMutableBytes { raw in
                    pread(memFD, raw.baseAddress! + filled, count - filled, off_t(Int64(bitPattern: address &+ UInt64(filled))))
                }
                if got < 0 && errno == EINTR { continue }
                if got <= 0 { failure = got < 0 ? errno : EIO; break }
                filled += got
            }
            if filled == count { return buffer }
            if failure != EIO && failure != EPERM && failure != EACCES {
                throw .runtime("pid \(pid): cannot read \(count) bytes at \(hex(address)): \(String(cString: strerror(failure)))")
            }
        }
        // Fallback: word by word, aligned (a mapping never ends inside an aligned word).
        let first = address & ~7, end = address + UInt64(count)
        try withStoppedThread { (tid) throws(UtapError) in
            var word = first
            while word < end {
                let value = try peek(tid, word)
                for i in 0..<UInt64(8) where word + i >= address && word + i < end {
                    buffer[Int(word + i - address)] = UInt8(truncatingIfNeeded: value >> (8 * i))
                }
                word += 8
            }
        }
        return buffer
    }

    private func writeByte(_ byte: UInt8, at address: UInt64) throws(UtapError) {
        try write([byte], at: address)
    }

    /// Writes `bytes` at `address`, text included (/proc/PID/mem writes with FOLL_FORCE;
    /// else PTRACE_POKETEXT word by word).
    func write(_ bytes: [UInt8], at address: UInt64) throws(UtapError) {
        checkThread()
        guard !bytes.isEmpty else { return }
        if memFD >= 0 {
            let wrote = bytes.withUnsafeBytes { pwrite(memFD, $0.baseAddress, $0.count, off_t(Int64(bitPattern: address))) }
            if wrote == bytes.count { return }
            // EIO/EPERM: e.g. proc_mem.force_override=never refuses FOLL_FORCE; use ptrace.
        }
        try withStoppedThread { (tid) throws(UtapError) in
            var at = address
            for byte in bytes {
                let word = at & ~7
                let shift = 8 * (at - word)
                let old = try peek(tid, word)
                let new = (old & ~(0xFF << shift)) | (UInt64(byte) << shift)
                if utap_ptrace(PT.POKETEXT, tid, UnsafeMutableRawPointer(bitPattern: UInt(word)),
                               UnsafeMutableRawPointer(bitPattern: UInt(new))) < 0 {
                    throw UtapError.runtime("pid \(pid): cannot write \(hex(at)): PTRACE_POKETEXT: \(String(cString: strerror(errno)))")
                }
                at += 1
            }
        }
    }

    /// Adds `amount` (wrapping) to the 16-bit USDT semaphore at `address`.
    func addToSemaphore(at address: UInt64, _ amount: UInt16) throws(UtapError) {
        let bytes = try read(address, count: 2)
        let value = (UInt16(bytes[0]) | UInt16(bytes[1]) << 8) &+ amount
        try write([UInt8(value & 0xFF), UInt8(value >> 8)], at: address)
    }

    /// The little-endian 64-bit word at `address`.
    func readWord(_ address: UInt64) throws(UtapError) -> UInt64 {
        try read(address, count: 8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    func writeWord(_ value: UInt64, at address: UInt64) throws(UtapError) {
        try write(withUnsafeBytes(of: value.littleEndian) { Array($0) }, at: address)
    }

    private func peek(_ tid: Int32, _ word: UInt64) throws(UtapError) -> UInt64 {
        let value = utap_ptrace(PT.PEEKTEXT, tid, UnsafeMutableRawPointer(bitPattern: UInt(word)), nil)
        if value == -1 && errno != 0 {
            throw .runtime("pid \(pid): cannot read \(hex(word)): PTRACE_PEEKTEXT: \(String(cString: strerror(errno)))")
        }
        return UInt64(bitPattern: Int64(value))
    }

    // MARK: detach

    /// Restores every breakpoint still in place (only where memory still reads 0xCC), then
    /// interrupts and detaches every thread, re-delivering any signal a thread was stopped
    /// with. Idempotent; also run by `deinit`. Best effort: a thread that exits meanwhile is
    /// simply dropped.
    public func detach() {
        guard isAttached else { return }
        checkThread()
        for address in breakpoints.keys.sorted() {
            try? removeBreakpoint(at: address)
        }
        breakpoints = [:]
        let rewindable = retiredBreakpoints
        var pending = threads.union(forkedChildren)
        while let tid = pending.popFirst() {
            if utap_ptrace(PT.INTERRUPT, tid, nil, nil) < 0 {
                threads.remove(tid)  // ESRCH: gone (or not ours any more)
                continue
            }
            switch waitForStop(tid, discovered: { pending.insert($0) }) {
            case .gone:
                break
            case .stopped(var signal):
                // A thread parked at one of our int3s: back onto the (restored) instruction,
                // and the SIGTRAP is ours, not the program's.
                if signal == SIGTRAP, Self.isBreakpointTrap(tid), var regs = try? Registers.get(tid),
                   rewindable.contains(regs[.rip] &- 1) {
                    regs[.rip] &-= 1
                    if (try? regs.set(tid)) != nil { signal = 0 }
                }
                _ = utap_ptrace(PT.DETACH, tid, nil, UnsafeMutableRawPointer(bitPattern: UInt(signal)))
            }
            threads.remove(tid)
        }
        threads = []
        forkedChildren = []
        retiredBreakpoints = []
        if memFD >= 0 { close(memFD); memFD = -1 }
        isAttached = false
    }

    // MARK: for the engine (same module)

    /// Forgets the breakpoint at `address` without writing: its mapping is gone.
    func forgetBreakpoint(at address: UInt64) {
        breakpoints[address] = nil
        sites[address] = nil
    }

    /// The process ran execve: the old address space and every breakpoint in it are gone;
    /// /proc/PID/mem is opened again for the new one.
    func resetAfterExec() {
        breakpoints = [:]
        retiredBreakpoints = []
        sites = [:]
        outOfLinePages = []
        stubs = [:]
        semaphores = [:]
        threads = [pid]
        openMemory()
    }

    /// For the engine's detach, with every thread held in a ptrace-stop: restores every
    /// breakpoint still in place and lets go of memory. The engine detaches the threads.
    func restoreAndRelease() {
        for address in breakpoints.keys.sorted() { try? removeBreakpoint(at: address) }
        for (address, amount) in semaphores { try? addToSemaphore(at: address, 0 &- amount) }
        semaphores = [:]
        breakpoints = [:]
        sites = [:]
        markGone()
    }

    /// The whole process is gone (its leader reaped by the event loop): nothing to detach.
    func markGone() {
        threads = []
        forkedChildren = []
        breakpoints = [:]
        retiredBreakpoints = []
        if memFD >= 0 { close(memFD); memFD = -1 }
        isAttached = false
    }

    /// True when `tid`, in a SIGTRAP signal-delivery-stop, got it from an int3
    /// (`si_code == SI_KERNEL`).
    static func isBreakpointTrap(_ tid: Int32) -> Bool {
        guard let info = try? SignalInfo.get(tid) else { return false }
        return info.signal == SIGTRAP && info.code == SignalInfo.kernel
    }

    // MARK: internals

    /// Seizes one thread. True when it is newly ours; false when it vanished or was already
    /// ours (auto-attached through TRACECLONE).
    private func seize(_ tid: Int32) throws(UtapError) -> Bool {
        let options = PT.O_TRACECLONE | PT.O_TRACEFORK | PT.O_TRACEVFORK | PT.O_TRACEEXEC | (killOnExit ? PT.O_EXITKILL : 0)
        if utap_ptrace(PT.SEIZE, tid, nil, UnsafeMutableRawPointer(bitPattern: UInt(options))) == 0 {
            threads.insert(tid)
            return true
        }
        let failure = errno
        if failure == ESRCH { return false }  // exited between the scan and the seize
        let tracer = Self.tracerPid(pid, tid: tid)
        if failure == EPERM, let tracer, tracer == getpid() {
            // Auto-attached child of a seized thread.
            threads.insert(tid)
            return true
        }
        if let tracer, tracer != 0 { throw Self.alreadyTraced(pid, by: tracer) }
        if tracer == nil { return false }
        throw .runtime("pid \(pid): cannot attach to thread \(tid): PTRACE_SEIZE: \(String(cString: strerror(failure)))",
                       hint: failure == EPERM ? "run utap as root (or with CAP_SYS_PTRACE)" : nil)
    }

    private enum StopOutcome { case gone, stopped(signal: Int32) }

    /// Waits for `tid` (already sent PTRACE_INTERRUPT) to reach a stop where it can be
    /// operated on. A signal-delivery-stop counts, returning the signal to deliver on resume;
    /// clone/fork/vfork/exec event stops also count (the new task is reported to
    /// `discovered`, being auto-attached).
    private func waitForStop(_ tid: Int32, discovered: (Int32) -> Void) -> StopOutcome {
        while true {
            var status: Int32 = 0
            let got = waitpid(tid, &status, PT.WALL)
            if got < 0 {
                if errno == EINTR { continue }
                return .gone  // ECHILD: not ours / already reaped
            }
            let low = status & 0x7F
            if low == 0 || (low != 0x7F) { return .gone }  // exited or killed
            let signal = (status >> 8) & 0xFF
            let event = (status >> 16) & 0xFF
            switch event {
            case 0:
                return .stopped(signal: signal)  // signal-delivery-stop: deliver it on resume
            case PT.EVENT_CLONE, PT.EVENT_FORK, PT.EVENT_VFORK:
                var message: UInt = 0
                if utap_ptrace(PT.GETEVENTMSG, tid, nil, &message) == 0 {
                    let child = Int32(truncatingIfNeeded: message)
                    if event == PT.EVENT_CLONE { threads.insert(child) } else { forkedChildren.insert(child) }
                    discovered(child)
                }
                return .stopped(signal: 0)
            default:
                return .stopped(signal: 0)  // EVENT_STOP (interrupt or group-stop), EVENT_EXEC
            }
        }
    }

    /// Runs `body` with one thread in a ptrace-stop (for PTRACE_PEEK/POKE), then resumes it.
    private func withStoppedThread(_ body: (Int32) throws(UtapError) -> Void) throws(UtapError) {
        if let stoppedThread {
            try body(stoppedThread)
            return
        }
        for tid in threads.sorted() {
            guard utap_ptrace(PT.INTERRUPT, tid, nil, nil) == 0 else { continue }
            var others: [Int32] = []
            switch waitForStop(tid, discovered: { others.append($0) }) {
            case .gone:
                threads.remove(tid)
                continue
            case .stopped(let signal):
                defer {
                    _ = utap_ptrace(PT.CONT, tid, nil, UnsafeMutableRawPointer(bitPattern: UInt(signal)))
                }
                try body(tid)
                return
            }
        }
        throw .runtime("pid \(pid): no thread left to stop")
    }

    private func checkThread() {
        precondition(pthread_equal(owner, pthread_self()) != 0,
                     "TracedProcess used from a thread other than the one that created it")
    }

    private func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

    private static func alreadyTraced(_ pid: Int32, by tracer: Int32) -> UtapError {
        let name = (try? readTextFile("/proc/\(tracer)/comm"))?.split(separator: "\n").first.map(String.init)
        return .runtime("pid \(pid): already traced by pid \(tracer)" + (name.map { " (\($0))" } ?? ""),
                        hint: "a process has one tracer at a time; detach the other one (gdb, strace, …) first")
    }

    /// TracerPid from /proc/PID[/task/TID]/status, nil when the process (thread) is gone.
    static func tracerPid(_ pid: Int32, tid: Int32? = nil) -> Int32? {
        ProcessState.statusNumber("TracerPid", pid: pid, tid: tid)
    }

    static func taskIDs(_ pid: Int32) throws(UtapError) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else {
            throw .runtime("pid \(pid): no such process")
        }
        defer { closedir(dir) }
        var ids: [Int32] = []
        while let entry = readdir(dir) {
            let name = entryName(entry)
            if let tid = Int32(name) { ids.append(tid) }
        }
        return ids.sorted()
    }

}
