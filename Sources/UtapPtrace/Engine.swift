import CUtapSys
import Glibc
import UtapCore

/// What a breakpoint does when a thread hits it.
public enum SiteRole: Equatable, Sendable {
    /// An entry probe: an event with the registers at the site.
    case entry(probe: Int)
    /// A return probe by return-address hijack, placed at its function's entry.
    case hijackReturn(probe: Int)
    /// A return probe's entry mark (`--return-mode sites`): entry time and stack pointer,
    /// matched at a `ret` for the latency.
    case markEntry(probe: Int)
    /// A return probe on one of its function's `ret` instructions.
    case returnSite(probe: Int)
    /// ld.so's `_dl_debug_state`: libraries were mapped or unmapped.
    case loaderHook
}

/// A breakpoint site in one address space.
struct Site {
    /// The file's bytes at the site (at least the instruction).
    var code: [UInt8]
    var roles: [SiteRole]
    /// How the displaced instruction is carried out; `.step` plans are made for the stub.
    var emulation: Emulation?
    /// The stub's address and the instruction as it runs there, once a thread needed it.
    var stub: (address: UInt64, step: OutOfLineStep)?

    /// Whether the stub runs natively, ending in a jump back (one stop per hit), or must be
    /// single-stepped: an indirect call would push the stub's address as its return address.
    static func runsNatively(_ step: OutOfLineStep) -> Bool { step.fixup != .call }
}

/// Where a thread stopped inside a natively run stub really is.
struct StubPosition {
    /// The probe's address.
    var address: UInt64
    /// The instruction has not completed: the thread belongs at the probe's address.
    var atStart: Bool
    /// Where it belongs.
    var original: UInt64
}

/// One probe event as the engine sees it, with the registers it happened with.
public struct Hit: Sendable {
    public var pid: Int32
    public var tid: Int32
    public var probe: Int
    public var kind: ProbeKind
    /// The probe's runtime address: the site for entries and `ret` sites, the function's
    /// entry for hijacked returns.
    public var address: UInt64
    /// At the site; for returns, right after the return (rax holds the value).
    public var registers: Registers
    public var timestampNs: UInt64
    public var latencyNs: UInt64?

    /// rdi, rsi, rdx, rcx, r8, r9.
    public var arguments: [UInt64] { Registers.argumentRegisters.map { registers[$0] } }
}

/// How `PtraceEngine.run` ended.
public enum RunOutcome: Equatable, Sendable {
    /// `until` returned true; the process still runs, still seized.
    case stopped
    /// The process exited with this status (its leader was reaped by the loop).
    case exited(Int32)
    /// The process was killed by this signal (its leader was reaped by the loop).
    case killed(Int32)
}

/// The ptrace engine (ptrace-xol.md): one tracer thread, `waitpid(-1, __WALL)`, int3
/// breakpoints whose displaced instruction is emulated or run out of line in a stub of an
/// injected page, return probes by return-address
/// hijack or on `ret` sites, signals kept intact, new threads, fork, vfork and exec followed.
///
/// Only the thread that hits a probe stops; the others run on.
///
/// **Out of line, one stop.** A stub is the instruction (rip-relative displacement
/// rewritten) followed by a jump back to the next instruction, so the thread runs it at
/// full speed with no second stop; only indirect calls are single-stepped (their pushed
/// return address needs fixing). A thread can be stopped inside a stub only by a signal
/// (or a PTRACE_INTERRUPT); no signal handler ever sees a program counter in the page
/// (`signalInStub`), and a fault is reported at the original address.
///
/// **Waiting.** `run` waits with `waitpid(-1, …, __WALL)`: the tracer must have **no other
/// children** while it runs. When the traced process is the tracer's child, its exit
/// status is returned by `run` and cannot be waited for again.
///
/// **Threading.** Same rule as `TracedProcess`: one tracer thread does everything.
public final class PtraceEngine {
    /// The process the engine was made for; `run` returns when its leader exits.
    public let root: TracedProcess
    /// Fork and vfork children are traced too (else they are cleaned and let go).
    public let followForks: Bool
    /// Called at each probe event, with the hitting thread stopped.
    public var onHit: (Hit) -> Void = { _ in }
    /// Called when a process's mappings changed (exec: everything; the loader hook: a
    /// library came or went), with a stopped thread of it: the place to add sites.
    public var onMappingsChanged: (TracedProcess) -> Void = { _ in }
    /// Probe hits handled so far (entry sites, returns included).
    public private(set) var hitCount = 0
    /// Called for each return event lost because a thread's return stack was full (the
    /// probe's index).
    public var onLost: (Int) -> Void = { _ in }
    /// Called for each call of a probe on `ret` sites whose entry could not be kept (a
    /// full stack of marks): its return is seen, without a latency.
    public var onUntimed: (Int) -> Void = { _ in }
    /// Called when a thread returned into the trampoline with no call pending there (the
    /// thread id); the thread gets SIGILL, as with the kernel's uretprobes.
    public var onUnmatchedReturn: (Int32) -> Void = { _ in }
    /// Returns into the trampoline that matched no pending call.
    public private(set) var unmatchedReturns = 0
    /// Called when a traced process starts another (fork, vfork, clone of a process).
    public var onProcessStarted: () -> Void = {}
    /// The root process's wait status, once the engine reaped its leader.
    public private(set) var rootExitStatus: Int32?

    /// Every traced thread.
    private var threads: [Int32: TracedThread] = [:]
    /// Stops reported by a task before the event that announces it.
    private var early: [Int32: Int32] = [:]
    private var detaching = false
    /// Held while hits come back to back; nil when the tracer does not poll.
    private let wakeLatency = spinNs > 0 ? WakeLatencyRequest() : nil
    /// Stops in a row that came within the poll.
    private var stopsWithinPoll = 0
    /// UTAP_PTRACE_DEBUG=1: every ptrace stop on stderr, for troubleshooting.
    static let debug = getenv("UTAP_PTRACE_DEBUG").map { String(cString: $0) == "1" } ?? false
    /// Deepest return stack kept per thread (the kernel's limit is 64 too).
    static let maxReturnDepth = 64

    public init(process: TracedProcess, followForks: Bool = false) {
        root = process
        self.followForks = followForks
        for tid in process.threads { threads[tid] = TracedThread(tid: tid, pid: process.pid, space: process) }
    }

    /// Traced processes (the root and followed children), by pid.
    public var processes: [TracedProcess] {
        var seen = Set<ObjectIdentifier>()
        return threads.values.map(\.space).filter { seen.insert(ObjectIdentifier($0)).inserted && $0.isAttached }
    }

    // MARK: sites

    /// Puts a breakpoint at runtime `address` of `space` whose int3 does `roles`, or adds
    /// the roles to the one already there. `code` is the file's bytes at the address (at
    /// least the whole instruction): the instruction is classified from them, and the int3
    /// is written only if memory still holds `code[0]`.
    public func addSite(in space: TracedProcess, at address: UInt64, code: [UInt8], roles: [SiteRole]) throws(UtapError) {
        if var site = space.sites[address] {
            site.roles += roles.filter { !site.roles.contains($0) }
            space.sites[address] = site
            return
        }
        guard !code.isEmpty else { throw .runtime("\(hex(address)): no code bytes for the probe") }
        var site = Site(code: code, roles: roles)
        switch InstructionAnalysis.plan(code, at: address, stub: address) {
        case .emulate(let emulation):
            site.emulation = emulation
        case .step:
            break  // planned again for the stub's address at the first hit
        case .refuse(let reason):
            throw .runtime("\(hex(address)): cannot probe this instruction: \(reason)")
        }
        try space.insertBreakpoint(at: address, expecting: code[0])
        space.sites[address] = site
    }

    /// Removes a site, restoring the byte. A thread that already executed its int3 is put
    /// back on the instruction when its stop arrives.
    public func removeSite(in space: TracedProcess, at address: UInt64) throws(UtapError) {
        guard space.sites.removeValue(forKey: address) != nil else { throw .runtime("\(hex(address)): no probe there") }
        try space.removeBreakpoint(at: address)
    }

    // MARK: event loop

    /// Handles ptrace stops until `until()` returns true (checked before each blocking
    /// wait, which a signal to the tracer thread interrupts) or the root process ends.
    @discardableResult
    public func run(until: () -> Bool = { false }) throws(UtapError) -> RunOutcome {
        guard root.isAttached else { throw .runtime("pid \(root.pid): not attached") }
        defer { wakeLatency?.release() }
        while true {
            if until() { return .stopped }
            var status: Int32 = 0
            let tid = wait(&status)
            if tid < 0 {
                if errno == EINTR { continue }
                if errno == ECHILD {
                    root.markGone()
                    throw .runtime("pid \(root.pid): no traced thread left to wait for")
                }
                throw .runtime("waitpid: \(String(cString: strerror(errno)))")
            }
            if let outcome = try handle(tid, status) { return outcome }
        }
    }

    /// waitpid(-1), first polled for `spinNs`: a stop that comes within it is taken without
    /// waking the tracer's sleeping CPU, which costs tens of µs on a busy VM host (measured
    /// here: 66 µs per hit without, 26 µs with 50 µs of polling). Two stops in a row that
    /// come within the poll mean hits come back to back (one alone may only mean the
    /// tracer was late): the wake-latency request is held, so the traced thread's CPU
    /// does not sleep between hits either (10 µs per hit); it is let go when a poll ends
    /// empty. UTAP_PTRACE_SPIN_US overrides (0: neither).
    private func wait(_ status: inout Int32) -> Int32 {
        if let wakeLatency {
            let deadline = monotonicNow() + Self.spinNs
            repeat {
                let tid = waitpid(-1, &status, PT.WALL | WNOHANG)
                if tid > 0 {
                    stopsWithinPoll += 1
                    if stopsWithinPoll >= 2 { wakeLatency.hold() }
                }
                if tid != 0 { return tid }
            } while monotonicNow() < deadline
            stopsWithinPoll = 0
            wakeLatency.release()
        }
        return waitpid(-1, &status, PT.WALL)
    }

    static let spinNs = UInt64(getenv("UTAP_PTRACE_SPIN_US").flatMap { UInt64(String(cString: $0)) } ?? 50) * 1000

    /// One wait status. Returns the outcome when it ends the root process.
    private func handle(_ tid: Int32, _ status: Int32) throws(UtapError) -> RunOutcome? {
        let low = status & 0x7F
        guard let thread = threads[tid] else {
            if low == 0x7F { adoptUnannounced(tid, status) }
            return nil
        }
        if low != 0x7F {
            return exited(thread, status)
        }
        thread.space.stoppedThread = tid
        defer { thread.space.stoppedThread = nil }
        let signal = (status >> 8) & 0xFF
        let event = (status >> 16) & 0xFF
        if Self.debug {
            let rip = (try? Registers.get(tid))?[.rip] ?? 0
            let line = "utap: ptrace: tid \(tid) signal \(signal) event \(event) rip \(hex(rip))\(thread.step != nil ? " stepping" : "")\n"
            _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        }
        switch event {
        case 0:
            try signalStop(thread, signal)
        case PT.EVENT_STOP:
            eventStop(thread, signal)
        case PT.EVENT_CLONE:
            // A thread whose first stop came before this event was adopted then and may be
            // mid-step already: its state is kept, not replaced by a fresh one.
            if let child = PT.eventMessage(tid), threads[child] == nil {
                let new = TracedThread(tid: child, pid: thread.pid, space: thread.space)
                new.emitsEvents = thread.emitsEvents
                announce(new)
            }
            release(thread)
        case PT.EVENT_FORK, PT.EVENT_VFORK:
            if let child = PT.eventMessage(tid) { forked(thread, child: child, shared: event == PT.EVENT_VFORK) }
            release(thread)
        case PT.EVENT_EXEC:
            execed(thread)
        default:
            release(thread)
        }
        return nil
    }

    private func exited(_ thread: TracedThread, _ status: Int32) -> RunOutcome? {
        threads[thread.tid] = nil
        guard thread.tid == thread.pid else { return nil }
        if thread.space === root && thread.pid == root.pid {
            // The leader is reaped last: the whole process is gone.
            threads = threads.filter { $0.value.space !== root }
            root.markGone()
            rootExitStatus = status
            let low = status & 0x7F
            return low == 0 ? .exited((status >> 8) & 0xFF) : .killed(low)
        }
        if thread.space.pid == thread.pid {
            threads = threads.filter { $0.value.space !== thread.space }
            thread.space.markGone()
        }
        return nil
    }

    /// A task stopped before the clone/fork event naming it: a thread of a traced process
    /// is taken at once; a fork child waits for its parent's event.
    private func adoptUnannounced(_ tid: Int32, _ status: Int32) {
        for space in processes where access("/proc/\(space.pid)/task/\(tid)", F_OK) == 0 && tid != space.pid {
            let new = TracedThread(tid: tid, pid: space.pid, space: space)
            threads[tid] = new
            _ = try? handle(tid, status)
            return
        }
        early[tid] = status
    }

    private func announce(_ thread: TracedThread) {
        threads[thread.tid] = thread
        if let status = early.removeValue(forKey: thread.tid) { _ = try? handle(thread.tid, status) }
    }

    // MARK: stops

    private func signalStop(_ thread: TracedThread, _ signal: Int32) throws(UtapError) {
        if let step = thread.step {
            try stepStop(thread, step, signal)
            return
        }
        let mayBeInStub = thread.enteredStub
        thread.enteredStub = false
        if signal != SIGTRAP && !mayBeInStub {
            // The common signal: nothing of ours is involved. (A 10 µs timer's signals
            // must cost no more than this, or the program starves.)
            release(thread, signal)
            return
        }
        guard var regs = try? Registers.get(thread.tid) else {
            release(thread, signal)
            return
        }
        guard signal == SIGTRAP, let info = try? SignalInfo.get(thread.tid), info.code == SignalInfo.kernel else {
            if let position = thread.space.stubPosition(of: regs[.rip]) {
                try signalInStub(thread, position, &regs, signal: signal)
            } else {
                release(thread, signal)
            }
            return
        }
        let address = regs[.rip] &- 1
        let space = thread.space
        if let site = space.sites[address] {
            try hit(thread, site, at: address, regs)
        } else if space.isTrampoline(address) {
            try returned(thread, &regs)
        } else if space.retiredBreakpoints.contains(address) {
            regs[.rip] = address  // a probe removed after this thread hit it
            try regs.set(thread.tid)
            release(thread)
        } else {
            release(thread, SIGTRAP)  // the program's own int3
        }
    }

    /// A signal for a thread inside a native stub. The instruction faulted: the fault is
    /// reported at the probe's address (the instruction runs there again if the handler
    /// returns, a second hit, as with the kernel's uprobes). It completed: the thread is
    /// moved to the next instruction first. It has not run yet: the signal waits, blocked,
    /// while the instruction is single-stepped (as for a stepped stub), and is delivered
    /// after it, outside the page.
    private func signalInStub(_ thread: TracedThread, _ position: StubPosition, _ regs: inout Registers,
                              signal: Int32) throws(UtapError) {
        let stub = regs[.rip]
        if position.atStart, let site = thread.space.sites[position.address], let (_, step) = site.stub,
           !Self.isFault(thread.tid, signal) {
            let active = ActiveStep(address: position.address, stub: stub, step: step)
            thread.step = active
            try stepStop(thread, active, signal)
            return
        }
        try moveOutOfStub(thread, position, &regs)
        release(thread, signal)
    }

    /// Puts a thread whose rip is in a stub where it belongs (see `StubPosition`); a fault's
    /// address in the stub becomes the matching original address.
    private func moveOutOfStub(_ thread: TracedThread, _ position: StubPosition, _ regs: inout Registers) throws(UtapError) {
        let stub = regs[.rip]
        regs[.rip] = position.original
        try regs.set(thread.tid)
        if position.atStart, var info = try? SignalInfo.get(thread.tid),
           info.faultAddress >= stub && info.faultAddress < stub + OutOfLinePage.slotSize {
            info.faultAddress = info.faultAddress - stub + position.address
            try info.set(thread.tid)
        }
    }

    /// A fault the CPU raised (not a signal someone sent: those have si_code <= 0).
    static func isFault(_ tid: Int32, _ signal: Int32) -> Bool {
        guard [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP].contains(signal), let info = try? SignalInfo.get(tid) else { return false }
        return info.code > 0
    }

    /// PTRACE_EVENT_STOP: a group-stop, a PTRACE_INTERRUPT, or a new task's first stop.
    private func eventStop(_ thread: TracedThread, _ signal: Int32) {
        if thread.cleanAtFirstStop {
            clean(thread)
            return
        }
        if [SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU].contains(signal) && !detaching {
            _ = utap_ptrace(PT.LISTEN, thread.tid, nil, nil)  // stays stopped; a step resumes later
            return
        }
        if thread.step != nil {
            // Interrupted around the step: a completed step's trap is still pending and is
            // reported first, else the instruction has not run yet.
            PT.resume(PT.SINGLESTEP, thread.tid)
            return
        }
        if detaching && Self.hasPendingTrap(thread) {
            // It ran an int3 and the interrupt was reported before the SIGTRAP: detached
            // now, that SIGTRAP would kill it. Let the trap be reported and handled.
            PT.resume(PT.CONT, thread.tid)
            return
        }
        release(thread)
    }

    /// A SIGTRAP is pending for the thread itself (SigPnd in /proc; an int3's trap is
    /// thread-directed) and not blocked, so resuming it reports the trap at once.
    static func hasPendingTrap(_ thread: TracedThread) -> Bool {
        guard let text = try? readTextFile("/proc/\(thread.pid)/task/\(thread.tid)/status") else { return false }
        var pending: UInt64 = 0, blocked: UInt64 = 0
        for line in text.split(separator: "\n") {
            let value = UInt64(line.split(separator: "\t").last ?? "", radix: 16) ?? 0
            if line.hasPrefix("SigPnd:") { pending = value }
            if line.hasPrefix("SigBlk:") { blocked = value }
        }
        return pending & ~blocked & PT.bit(SIGTRAP) != 0
    }

    /// A probe's int3: the events, then the displaced instruction.
    private func hit(_ thread: TracedThread, _ site: Site, at address: UInt64, _ regs: Registers) throws(UtapError) {
        hitCount += 1
        let now = monotonicNow()
        var hijacked: [Int] = []
        var loaderEvent = false
        for role in site.roles {
            switch role {
            case .entry(let probe):
                if thread.emitsEvents {
                    onHit(Hit(pid: thread.pid, tid: thread.tid, probe: probe, kind: .entry, address: address,
                              registers: regs, timestampNs: now))
                }
            case .hijackReturn(let probe):
                hijacked.append(probe)
            case .markEntry(let probe):
                let sp = regs[.rsp]
                thread.marks.removeAll { $0.sp < sp || ($0.sp == sp && $0.probe == probe) }
                if thread.marks.count < Self.maxReturnDepth {
                    thread.marks.append(EntryMark(probe: probe, sp: sp, entryNs: now))
                } else {
                    onUntimed(probe)
                }
            case .returnSite(let probe):
                // `ret` runs now: rsp points at the return address, as at entry.
                let sp = regs[.rsp]
                thread.marks.removeAll { $0.sp < sp }  // left by longjmp or an exception
                var latency: UInt64?
                if let i = thread.marks.lastIndex(where: { $0.sp == sp && $0.probe == probe }) {
                    latency = now &- thread.marks.remove(at: i).entryNs
                }
                if thread.emitsEvents {
                    onHit(Hit(pid: thread.pid, tid: thread.tid, probe: probe, kind: .return, address: address,
                              registers: regs, timestampNs: now, latencyNs: latency))
                }
            case .loaderHook:
                loaderEvent = true
            }
        }
        if !hijacked.isEmpty { try hijackReturn(thread, probes: hijacked, function: address, regs, now) }
        if loaderEvent { onMappingsChanged(thread.space) }
        try dispose(thread, at: address, regs)
    }

    /// Carries out the displaced instruction of the site at `address` (maybe changed by
    /// `onMappingsChanged`, so looked up again) and resumes the thread.
    private func dispose(_ thread: TracedThread, at address: UInt64, _ registers: Registers) throws(UtapError) {
        var regs = registers
        let space = thread.space
        guard var site = space.sites[address] else {
            regs[.rip] = address
            try regs.set(thread.tid)
            release(thread)
            return
        }
        if let emulation = site.emulation {
            do {
                try Self.apply(emulation, at: address, to: &regs,
                               push: { (value, at) throws(UtapError) in try pokeStack(thread.tid, at, value) },
                               load: { (at) throws(UtapError) in try space.readWord(at) })
            } catch {
                // The stack is not writable: the program faults as the instruction would have.
                try deliverFault(thread, at: address, faultAddress: regs[.rsp] &- 8)
                return
            }
            try regs.set(thread.tid)
            release(thread)
            return
        }
        if site.stub == nil {
            let placeholder = try space.stubSlot(near: address, bytes: [], using: thread.tid)
            switch InstructionAnalysis.plan(site.code, at: address, stub: placeholder) {
            case .step(let step):
                var bytes = step.bytes
                if Site.runsNatively(step) && step.fixup == .instructionPointer {
                    // jmp rel32 back to the next instruction.
                    let next = address + UInt64(step.bytes.count)
                    let from = placeholder + UInt64(bytes.count) + 5
                    bytes += [0xE9] + withUnsafeBytes(of: Int32(truncatingIfNeeded: Int64(bitPattern: next &- from)).littleEndian) { Array($0) }
                }
                try space.write(bytes, at: placeholder)
                if Site.runsNatively(step) {
                    space.stubs[placeholder] = (address, step.bytes.count)
                }
                site.stub = (placeholder, step)
                space.sites[address] = site
            case .emulate, .refuse:
                // Out of reach of the page (rip-relative): leave the probe, run natively.
                throw .runtime("pid \(space.pid): \(hex(address)): the instruction cannot run out of line here")
            }
        }
        let (stub, step) = site.stub!
        regs[.rip] = stub
        try regs.set(thread.tid)
        if Site.runsNatively(step) {
            thread.enteredStub = true
            release(thread)
            return
        }
        thread.step = ActiveStep(address: address, stub: stub, step: step)
        PT.resume(PT.SINGLESTEP, thread.tid)
    }

    /// The thread's next stop after a single-step in a stub (ptrace-xol.md §1a.5).
    private func stepStop(_ thread: TracedThread, _ active: ActiveStep, _ signal: Int32) throws(UtapError) {
        let tid = thread.tid
        guard var regs = try? Registers.get(tid) else { return }
        let info = try? SignalInfo.get(tid)
        let length = UInt64(active.step.bytes.count)
        let inStub = regs[.rip] == active.stub
        if signal == SIGTRAP, let info, info.code > 0 {
            if active.step.repeats && inStub {
                PT.resume(PT.SINGLESTEP, tid)  // rep: one iteration per step
                return
            }
            if info.code == SignalInfo.kernel && regs[.rip] == active.stub + length + 1 {
                regs[.rip] = active.stub + length  // ran into the stub's int3 after a CONT
            } else if info.code == SignalInfo.kernel {
                release(thread, signal)  // not ours
                return
            }
            try finishStep(thread, active, &regs)
            return
        }
        if [SIGSEGV, SIGBUS, SIGILL, SIGFPE].contains(signal) && inStub {
            // The instruction faulted: report it at its real address and let it run there
            // again after the handler, as the CPU would.
            thread.step = nil
            if let saved = active.savedMask { try PT.setSignalMask(tid, saved) }
            regs[.rip] = active.address
            try regs.set(tid)
            if var info, info.faultAddress >= active.stub && info.faultAddress < active.stub + OutOfLinePage.slotSize {
                info.faultAddress = info.faultAddress - active.stub + active.address
                try info.set(tid)
            }
            release(thread, signal)
            return
        }
        // Any other signal: never delivered inside the stub. Blocked for the rest of the
        // step, so the kernel queues it again; delivered once the mask is back.
        var deferring = active
        if deferring.savedMask == nil {
            let mask = try PT.signalMask(tid)
            try PT.setSignalMask(tid, mask | PT.blockAllButFaults)
            deferring.savedMask = mask
            thread.step = deferring
        }
        PT.resume(PT.SINGLESTEP, tid, signal: signal)
    }

    /// Puts the state of a thread that ran the stub back in the original's place.
    private func finishStep(_ thread: TracedThread, _ active: ActiveStep, _ regs: inout Registers) throws(UtapError) {
        let tid = thread.tid
        let next = active.address + UInt64(active.step.bytes.count)
        switch active.step.fixup {
        case .instructionPointer:
            regs[.rip] = regs[.rip] &- active.stub &+ active.address
        case .call:
            try pokeStack(tid, regs[.rsp], next)  // the return address pushed was in the stub
        case .none:
            break
        }
        if active.step.clearsTrapFlag {
            let word = try thread.space.readWord(regs[.rsp])
            try pokeStack(tid, regs[.rsp], word & ~0x100)
        }
        try regs.set(tid)
        if let saved = active.savedMask { try PT.setSignalMask(tid, saved) }
        thread.step = nil
        release(thread)
    }

    /// Makes the thread take SIGSEGV at `address` for `faultAddress`, as the instruction
    /// there would have (an emulated push to an unwritable stack).
    private func deliverFault(_ thread: TracedThread, at address: UInt64, faultAddress: UInt64) throws(UtapError) {
        var regs = try Registers.get(thread.tid)
        regs[.rip] = address
        try regs.set(thread.tid)
        var info = SignalInfo(raw: [Int32](repeating: 0, count: 32))
        info.raw[0] = SIGSEGV
        info.raw[2] = 1  // SEGV_MAPERR
        info.faultAddress = faultAddress
        try info.set(thread.tid)
        release(thread, SIGSEGV)
    }

    // MARK: returns

    /// At a function's entry: the return address becomes the trampoline (ptrace-xol.md §1b).
    ///
    /// A thread may run on several stacks (ucontext coroutines, sigaltstack), and a
    /// context saved by `swapcontext` holds a copy of a hijacked return address: a call
    /// pending on another stack is alive whatever its slot's address, so calls are
    /// dropped as abandoned (longjmp, exception) only on proof, never for lying below.
    private func hijackReturn(_ thread: TracedThread, probes: [Int], function: UInt64, _ regs: Registers,
                              _ now: UInt64) throws(UtapError) {
        let space = thread.space
        let slot = regs[.rsp]
        let trampoline = try space.trampoline(using: thread.tid)
        var original = try space.readWord(slot)
        let chained = original == trampoline
        if chained {
            // A tail call from a hijacked function: both return through this slot.
            guard let outer = thread.returns.last(where: { $0.slot == slot }) else { return }
            original = outer.original
        } else {
            // The call just stored its return address here: no return is pending here any more.
            thread.returns.removeAll { $0.slot == slot }
        }
        if thread.returns.count >= Self.maxReturnDepth { dropAbandonedReturns(thread, trampoline: trampoline) }
        guard thread.returns.count < Self.maxReturnDepth else {
            probes.forEach(onLost)
            return
        }
        if !chained { try space.writeWord(trampoline, at: slot) }
        thread.returns.append(PendingReturn(probes: probes, function: function, original: original, slot: slot, entryNs: now))
    }

    /// With the return stack full: drops the calls whose slot no longer holds the
    /// trampoline, which nothing can return through (frames a longjmp left, reused since).
    /// A pending call's slot still holds it, on any stack. Memory is read only here, when
    /// the next call would be lost, so the common hit reads nothing.
    private func dropAbandonedReturns(_ thread: TracedThread, trampoline: UInt64) {
        let space = thread.space
        thread.returns.removeAll { (try? space.readWord($0.slot)) != trampoline }
    }

    /// A thread returned into the trampoline: the return events, then on to the real
    /// return address.
    private func returned(_ thread: TracedThread, _ regs: inout Registers) throws(UtapError) {
        let now = monotonicNow()
        let slot = regs[.rsp] &- 8
        let pending = takeReturns(through: slot, for: thread)
        for call in pending {
            hitCount += 1
            var at = regs
            at[.rip] = call.original
            for probe in call.probes where thread.emitsEvents {
                onHit(Hit(pid: thread.pid, tid: thread.tid, probe: probe, kind: .return, address: call.function,
                          registers: at, timestampNs: now, latencyNs: now &- call.entryNs))
            }
        }
        guard let original = pending.last?.original else {
            // A jump to the trampoline no call put there: there is nowhere to return to.
            unmatchedReturns += 1
            onUnmatchedReturn(thread.tid)
            release(thread, SIGILL)
            return
        }
        regs[.rip] = original
        try regs.set(thread.tid)
        release(thread)
    }

    /// The calls pending at `slot`, innermost first (a tail call chains several), taken
    /// from the thread's returns; else from another thread's of the same memory: a
    /// coroutine suspended in a call by one thread may be resumed by another.
    private func takeReturns(through slot: UInt64, for thread: TracedThread) -> [PendingReturn] {
        let owner = thread.returns.contains { $0.slot == slot } ? thread
            : threads.values.first { $0.space === thread.space && $0.returns.contains { $0.slot == slot } }
        guard let owner else { return [] }
        var taken: [PendingReturn] = []
        while let i = owner.returns.lastIndex(where: { $0.slot == slot }) {
            taken.append(owner.returns.remove(at: i))
        }
        return taken
    }

    // MARK: processes

    private func forked(_ parent: TracedThread, child: Int32, shared: Bool) {
        let thread: TracedThread
        if shared {
            // vfork: the child borrows the parent's memory (and breakpoints) until it
            // execs or exits; it never returns through the parent's frames.
            thread = TracedThread(tid: child, pid: child, space: parent.space)
        } else {
            let space = TracedProcess(forkOf: parent.space, pid: child)
            thread = TracedThread(tid: child, pid: child, space: space)
            thread.returns = parent.returns
            thread.marks = parent.marks
            thread.cleanAtFirstStop = !followForks
        }
        thread.emitsEvents = followForks && parent.emitsEvents
        announce(thread)
        onProcessStarted()
    }

    /// A fork child utap does not follow: its copy of the text gets the original bytes
    /// back, its hijacked return addresses their values, and it is let go.
    private func clean(_ thread: TracedThread) {
        let space = thread.space
        space.stoppedThread = thread.tid
        for pending in thread.returns where (try? space.readWord(pending.slot)) == space.outOfLinePages.first?.trampoline {
            try? space.writeWord(pending.original, at: pending.slot)
        }
        space.restoreAndRelease()
        threads[thread.tid] = nil
        PT.resume(PT.DETACH, thread.tid)
    }

    /// execve replaced the process image: everything utap knew of the old one is dropped
    /// (never written: it is gone), and the owner adds sites for the new one.
    private func execed(_ thread: TracedThread) {
        let pid = thread.tid  // reported under the leader's id
        if let old = PT.eventMessage(pid), old != pid, let former = threads.removeValue(forKey: old) {
            former.tid = pid  // exec from another thread: it is the leader now
            threads[pid] = former
        }
        guard let execing = threads[pid] else { return }
        for (tid, other) in threads where other.pid == pid && tid != pid { threads[tid] = nil }
        execing.returns = []
        execing.marks = []
        execing.step = nil
        if execing.space.pid != pid {
            // A vfork child leaves its parent's memory.
            guard followForks else {
                threads[pid] = nil
                PT.resume(PT.DETACH, pid)
                return
            }
            execing.space = TracedProcess(forkOf: execing.space, pid: pid)
        }
        execing.space.resetAfterExec()
        execing.space.stoppedThread = pid
        onMappingsChanged(execing.space)
        release(execing)
    }

    // MARK: detach

    /// Stops every thread at a safe point (steps finished, trampoline returns done),
    /// restores every byte of text and every hijacked return address, then detaches all
    /// threads, each with the signal it was stopped with. Idempotent.
    public func detach() {
        guard !detaching, root.isAttached || !threads.isEmpty else { return }
        detaching = true
        for thread in threads.values where thread.parked == nil {
            if utap_ptrace(PT.INTERRUPT, thread.tid, nil, nil) < 0 { threads[thread.tid] = nil }
        }
        // Settle: every stop now parks its thread instead of resuming it.
        let deadline = monotonicNow() + 5_000_000_000
        while threads.values.contains(where: { $0.parked == nil }) && monotonicNow() < deadline {
            var status: Int32 = 0
            let tid = waitpid(-1, &status, PT.WALL | WNOHANG)
            if tid == 0 { usleep(200); continue }
            if tid < 0 { if errno == EINTR { continue } else { break } }
            _ = try? handle(tid, status)
        }
        for thread in threads.values where thread.parked != nil {
            guard var regs = try? Registers.get(thread.tid) else { continue }
            if let position = thread.space.stubPosition(of: regs[.rip]) {
                try? moveOutOfStub(thread, position, &regs)
            } else if thread.space.isTrampoline(regs[.rip]) {
                // Returned into the trampoline, its int3 not yet run: do the return now.
                let signal = thread.parked
                try? returned(thread, &regs)
                thread.parked = signal
            }
        }
        for space in processes {
            space.stoppedThread = threads.values.first { $0.space === space && $0.parked != nil }?.tid
            if let trampoline = space.outOfLinePages.first?.trampoline {
                for thread in threads.values where thread.space === space {
                    for pending in thread.returns where (try? space.readWord(pending.slot)) == trampoline {
                        try? space.writeWord(pending.original, at: pending.slot)
                    }
                }
            }
            space.restoreAndRelease()
        }
        for thread in threads.values {
            _ = utap_ptrace(PT.DETACH, thread.tid, nil, UnsafeMutableRawPointer(bitPattern: UInt(thread.parked ?? 0)))
        }
        threads = [:]
        root.markGone()
    }

    // MARK: helpers

    /// Lets a thread run on with `signal`, or, while detaching, keeps it stopped with the
    /// signal saved for PTRACE_DETACH.
    private func release(_ thread: TracedThread, _ signal: Int32 = 0) {
        if detaching {
            thread.parked = signal
            return
        }
        PT.resume(PT.CONT, thread.tid, signal: signal)
    }

    /// Writes one stack word of a stopped thread (PTRACE_POKEDATA: one call).
    private func pokeStack(_ tid: Int32, _ address: UInt64, _ value: UInt64) throws(UtapError) {
        if utap_ptrace(PT.POKEDATA, tid, UnsafeMutableRawPointer(bitPattern: UInt(address)),
                       UnsafeMutableRawPointer(bitPattern: UInt(value))) == 0 { return }
        throw .runtime("thread \(tid): cannot write the stack at \(hex(address)): \(String(cString: strerror(errno)))")
    }

    /// Carries out `emulation` (the instruction at `address`) on `regs`; `push(value, at)`
    /// writes the 8-byte stack word before rsp moves, `load(at)` reads one.
    public static func apply(_ emulation: Emulation, at address: UInt64, to regs: inout Registers,
                             push: (UInt64, UInt64) throws(UtapError) -> Void,
                             load: (UInt64) throws(UtapError) -> UInt64) throws(UtapError) {
        switch emulation {
        case .skip(let length):
            regs[.rip] = address &+ UInt64(length)
        case .jump(let target):
            regs[.rip] = target
        case .conditionalJump(let condition, let target, let fallThrough):
            regs[.rip] = conditionHolds(condition, eflags: regs[.eflags]) ? target : fallThrough
        case .call(let target, let returnAddress):
            try push(returnAddress, regs[.rsp] &- 8)
            regs[.rsp] &-= 8
            regs[.rip] = target
        case .push(let register, let next):
            try push(regs[register], regs[.rsp] &- 8)  // push %rsp pushes the old value
            regs[.rsp] &-= 8
            regs[.rip] = next
        case .moveStackPointerToFramePointer(let next):
            regs[.rbp] = regs[.rsp]
            regs[.rip] = next
        case .subtractFromStackPointer(let immediate, let next):
            let (result, eflags) = subtract(regs[.rsp], UInt64(bitPattern: Int64(Int32(bitPattern: immediate))),
                                            eflags: regs[.eflags])
            regs[.rsp] = result
            regs[.eflags] = eflags
            regs[.rip] = next
        case .return(let extraPop):
            regs[.rip] = try load(regs[.rsp])
            regs[.rsp] &+= 8 + UInt64(extraPop)
        }
    }

    /// eflags bits.
    static let CF: UInt64 = 1 << 0, PF: UInt64 = 1 << 2, AF: UInt64 = 1 << 4, ZF: UInt64 = 1 << 6,
               SF: UInt64 = 1 << 7, OF: UInt64 = 1 << 11

    /// The x86 condition code `condition` (low nibble of Jcc/SETcc/CMOVcc) under `eflags`.
    public static func conditionHolds(_ condition: UInt8, eflags: UInt64) -> Bool {
        let cf = eflags & CF != 0, pf = eflags & PF != 0, zf = eflags & ZF != 0
        let sf = eflags & SF != 0, of = eflags & OF != 0
        let base: Bool
        switch condition >> 1 & 7 {
        case 0: base = of                // O / NO
        case 1: base = cf                // B / AE
        case 2: base = zf                // E / NE
        case 3: base = cf || zf          // BE / A
        case 4: base = sf                // S / NS
        case 5: base = pf                // P / NP
        case 6: base = sf != of          // L / GE
        default: base = zf || sf != of   // LE / G
        }
        return condition & 1 == 0 ? base : !base
    }

    /// 64-bit `sub`: the result and eflags with CF PF AF ZF SF OF set as the CPU sets them
    /// (other bits kept).
    public static func subtract(_ destination: UInt64, _ source: UInt64, eflags: UInt64) -> (UInt64, UInt64) {
        let result = destination &- source
        var flags = eflags & ~(CF | PF | AF | ZF | SF | OF)
        if destination < source { flags |= CF }
        if (result & 0xFF).nonzeroBitCount % 2 == 0 { flags |= PF }
        if (destination ^ source ^ result) & 0x10 != 0 { flags |= AF }
        if result == 0 { flags |= ZF }
        if result >> 63 != 0 { flags |= SF }
        if ((destination ^ source) & (destination ^ result)) >> 63 != 0 { flags |= OF }
        return (result, flags)
    }

    private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}


/// A traced thread and what the engine keeps for it.
final class TracedThread {
    var tid: Int32
    /// Its process (thread group) id, for events.
    let pid: Int32
    /// The memory it runs in (a vfork child runs in its parent's).
    var space: TracedProcess
    /// Hijacked returns, innermost last.
    var returns: [PendingReturn] = []
    /// Entry marks of return probes on `ret` sites, innermost last.
    var marks: [EntryMark] = []
    /// Set while the thread single-steps a stub.
    var step: ActiveStep?
    /// Resumed into a native stub and not stopped since: its rip may be in the page.
    var enteredStub = false
    /// Events are reported (false for fork children utap does not follow).
    var emitsEvents = true
    /// A fork child to clean and let go at its first stop.
    var cleanAtFirstStop = false
    /// While detaching: stopped for good, with the signal to detach with.
    var parked: Int32?

    init(tid: Int32, pid: Int32, space: TracedProcess) {
        self.tid = tid
        self.pid = pid
        self.space = space
    }
}

struct PendingReturn {
    var probes: [Int]
    var function: UInt64
    var original: UInt64
    /// Where the return address is (rsp at entry).
    var slot: UInt64
    var entryNs: UInt64
}

struct EntryMark {
    var probe: Int
    var sp: UInt64
    var entryNs: UInt64
}

struct ActiveStep {
    /// The probe's address.
    var address: UInt64
    var stub: UInt64
    var step: OutOfLineStep
    /// The thread's signal mask while a signal is deferred (blocked until the step ends).
    var savedMask: UInt64?
}
