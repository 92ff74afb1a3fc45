import CUtapSys
import Glibc
import UtapCore

/// The general-purpose registers of a stopped thread, in `struct user_regs_struct` order
/// (PTRACE_GETREGS/SETREGS). `Register`'s raw values are the indexes of that layout.
public struct Registers: Equatable, Sendable {
    /// r15 … ss (21 words, `Register`), then fs_base, gs_base, ds, es, fs, gs.
    public var words: [UInt64]
    public static let count = 27

    public init(words: [UInt64] = [UInt64](repeating: 0, count: Registers.count)) {
        precondition(words.count == Self.count)
        self.words = words
    }

    public subscript(_ register: Register) -> UInt64 {
        get { words[register.rawValue] }
        set { words[register.rawValue] = newValue }
    }

    /// PTRACE_GETREGS of a thread in a ptrace-stop.
    public static func get(_ tid: Int32) throws(UtapError) -> Registers {
        var regs = Registers()
        let rc = regs.words.withUnsafeMutableBytes { utap_ptrace(PT.GETREGS, tid, nil, $0.baseAddress) }
        if rc < 0 { throw .runtime("thread \(tid): PTRACE_GETREGS: \(String(cString: strerror(errno)))") }
        return regs
    }

    /// PTRACE_SETREGS.
    public func set(_ tid: Int32) throws(UtapError) {
        var copy = words
        let rc = copy.withUnsafeMutableBytes { utap_ptrace(PT.SETREGS, tid, nil, $0.baseAddress) }
        if rc < 0 { throw .runtime("thread \(tid): PTRACE_SETREGS: \(String(cString: strerror(errno)))") }
    }
}

/// The fixed head of a `siginfo_t` (PTRACE_GETSIGINFO).
public struct SignalInfo: Equatable, Sendable {
    public var signal: Int32
    public var errno: Int32
    public var code: Int32
    /// `si_code` of an int3 (and of other kernel-generated signals).
    public static let kernel: Int32 = 0x80
    /// `si_code` of a single-step trap.
    public static let trace: Int32 = 2

    public static func get(_ tid: Int32) throws(UtapError) -> SignalInfo {
        var raw = [Int32](repeating: 0, count: 32)  // siginfo_t is 128 bytes
        let rc = raw.withUnsafeMutableBytes { utap_ptrace(PT.GETSIGINFO, tid, nil, $0.baseAddress) }
        if rc < 0 { throw .runtime("thread \(tid): PTRACE_GETSIGINFO: \(String(cString: strerror(Glibc.errno)))") }
        return SignalInfo(signal: raw[0], errno: raw[1], code: raw[2])
    }
}

/// One probe hit, as seen at the int3 (before the displaced instruction is emulated).
public struct Hit: Equatable, Sendable {
    public var tid: Int32
    /// The probe's runtime address (rip − 1 at the stop).
    public var address: UInt64
    /// rdi, rsi, rdx, rcx, r8, r9.
    public var arguments: [UInt64]
}

/// How `HitLoop.run` ended.
public enum RunOutcome: Equatable, Sendable {
    /// `until` returned true; the process still runs, still seized.
    case stopped
    /// The process exited with this status (its leader was reaped by the loop).
    case exited(Int32)
    /// The process was killed by this signal (its leader was reaped by the loop).
    case killed(Int32)
}

/// Entry probes on a `TracedProcess`, handled by an event loop with **emulation only**
/// (ptrace-xol.md §1a step 4, EMULATE): each hit is one stop, the displaced instruction is
/// carried out on the registers (and, for push/call, an 8-byte stack write), then
/// `PTRACE_CONT(0)`. Sites whose instruction is not emulated (`InstructionPlan.step`,
/// `.refuse`) are refused by `addProbe`: there is no out-of-line page or single-stepping yet.
///
/// **Waiting.** `run` waits with `waitpid(-1, …, __WALL)`: the tracer must have **no other
/// children** while it runs (any other child's exit would be reaped here and ignored). When
/// the traced process is also the tracer's child, its exit status is returned by `run`
/// (`.exited`/`.killed`) and cannot be waited for again.
///
/// **Signals.** Every signal-delivery-stop that is not one of our int3s is resumed with the
/// same signal (`PTRACE_CONT(sig)`), so it is delivered exactly once; a SIGTRAP that is not at
/// a probe (the program's own int3, `raise(SIGTRAP)`) too. Group-stops (`PTRACE_EVENT_STOP`
/// with a stop signal) are left in place with `PTRACE_LISTEN`.
///
/// **Threads.** New threads (TRACECLONE) are adopted and resumed; exited ones dropped.
///
/// Not handled yet: fork/vfork children are resumed untouched (a child that runs a probed
/// instruction dies of SIGTRAP: its copy of the text still holds the int3s), exec is resumed
/// without re-resolving probes (the new image has none of our int3s, the table is stale),
/// return probes, and a stack write that fails (reported by `run` throwing, the thread left
/// parked at the int3; `detach()` then puts it back on the instruction).
///
/// Same threading rule as `TracedProcess`: one tracer thread does everything.
public final class HitLoop {
    public let process: TracedProcess
    /// Probe runtime address → the emulation of the instruction the int3 displaced.
    public private(set) var probes: [UInt64: Emulation] = [:]
    /// Hits handled so far.
    public private(set) var hitCount = 0
    /// A hit at which `run` stopped, its thread still at the int3.
    private var parked: (Int32, UInt64, Emulation)?

    public init(process: TracedProcess) {
        self.process = process
    }

    /// Installs an entry probe at runtime `address`. `code` is the file's bytes at that
    /// address (at least the whole instruction; 15 bytes, or up to the end of the section):
    /// the instruction is classified from them, and the int3 is written only if memory still
    /// holds `code[0]`.
    public func addProbe(at address: UInt64, code: [UInt8]) throws(UtapError) {
        guard !code.isEmpty else { throw .runtime("\(hex(address)): no code bytes for the probe") }
        if probes[address] != nil { throw .runtime("\(hex(address)): a probe is already there") }
        switch InstructionAnalysis.plan(code, at: address, stub: address) {
        case .emulate(let emulation):
            try process.insertBreakpoint(at: address, expecting: code[0])
            probes[address] = emulation
        case .step:
            throw .runtime("\(hex(address)): the instruction there needs single-stepping out of line, not supported yet",
                           hint: "probe a function's first instruction (endbr64, push, nop), or another emulated instruction")
        case .refuse(let reason):
            throw .runtime("\(hex(address)): cannot probe this instruction: \(reason)")
        }
    }

    /// Removes the probe at `address`, restoring the byte. A thread that already executed the
    /// int3 is still put back on the instruction when its stop arrives.
    public func removeProbe(at address: UInt64) throws(UtapError) {
        guard probes.removeValue(forKey: address) != nil else { throw .runtime("\(hex(address)): no probe there") }
        try process.removeBreakpoint(at: address)
    }

    /// Restores every probe's byte and detaches (threads parked at an int3 are moved back
    /// onto the instruction first). Idempotent.
    public func detach() {
        if let (tid, address, _) = parked, process.isAttached {
            // Its stop was already reported (consumed by `run`): TracedProcess.detach could
            // not interrupt it. Restore the bytes, put it back on the instruction, let it go.
            for probe in probes.keys.sorted() { try? process.removeBreakpoint(at: probe) }
            if var regs = try? Registers.get(tid) {
                regs[.rip] = address
                try? regs.set(tid)
            }
            _ = utap_ptrace(PT.DETACH, tid, nil, nil)
            process.dropThread(tid)
        }
        probes = [:]
        parked = nil
        process.detach()
    }

    /// Handles ptrace stops until `until()` returns true or the process ends. `until` is
    /// checked before each (blocking) wait and right after each `onHit`; when it turns true
    /// at a hit, that thread is left parked at the int3 (not yet emulated), so the process
    /// cannot run on past the hit; `detach()` then puts it back on the instruction, while a
    /// later `run` first finishes that hit (emulates and resumes it). `onHit`
    /// runs for each probe hit, before the displaced instruction is emulated.
    @discardableResult
    public func run(until: () -> Bool = { false }, onHit: (Hit) -> Void) throws(UtapError) -> RunOutcome {
        guard process.isAttached else { throw .runtime("pid \(process.pid): not attached") }
        if let (tid, address, emulation) = parked {
            parked = nil
            try finishHit(tid, address, emulation)
        }
        while true {
            if until() { return .stopped }
            var status: Int32 = 0
            let tid = waitpid(-1, &status, PT.WALL)
            if tid < 0 {
                if errno == EINTR { continue }
                if errno == ECHILD {
                    process.markGone()
                    throw .runtime("pid \(process.pid): no traced thread left to wait for")
                }
                throw .runtime("waitpid: \(String(cString: strerror(errno)))")
            }
            let low = status & 0x7F
            if low != 0x7F {
                // Exited or killed.
                if tid == process.pid {
                    process.markGone()
                    return low == 0 ? .exited((status >> 8) & 0xFF) : .killed(low)
                }
                process.dropThread(tid)
                process.dropForkedChild(tid)
                continue
            }
            if !process.threads.contains(tid) && !process.forkedChildren.contains(tid) {
                // Its first stop can come before the parent's clone/fork event.
                if access("/proc/\(process.pid)/task/\(tid)", F_OK) == 0 {
                    process.adoptThread(tid)
                } else {
                    process.adoptForkedChild(tid)
                }
            }
            let signal = (status >> 8) & 0xFF
            let event = (status >> 16) & 0xFF
            switch event {
            case 0:
                if try signalStop(tid, signal: signal, until: until, onHit: onHit) { return .stopped }
            case PT.EVENT_STOP:
                if [SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU].contains(signal) {
                    _ = utap_ptrace(PT.LISTEN, tid, nil, nil)  // group-stop: stay stopped
                } else {
                    resume(tid, 0)  // a new thread's first stop, or a PTRACE_INTERRUPT
                }
            case PT.EVENT_CLONE, PT.EVENT_FORK, PT.EVENT_VFORK:
                var message: UInt = 0
                if utap_ptrace(PT.GETEVENTMSG, tid, nil, &message) == 0 {
                    let child = Int32(truncatingIfNeeded: message)
                    if event == PT.EVENT_CLONE { process.adoptThread(child) } else { process.adoptForkedChild(child) }
                }
                resume(tid, 0)  // the child reports its own first stop, resumed then
            default:
                resume(tid, 0)  // EVENT_EXEC (not handled yet, see the type's comment)
            }
        }
    }

    // MARK: internals

    /// True when the hit's thread was left parked at the int3 because `until()` became true.
    private func signalStop(_ tid: Int32, signal: Int32, until: () -> Bool,
                            onHit: (Hit) -> Void) throws(UtapError) -> Bool {
        guard signal == SIGTRAP, process.threads.contains(tid), TracedProcess.isBreakpointTrap(tid) else {
            resume(tid, signal)
            return false
        }
        var regs: Registers
        do { regs = try Registers.get(tid) } catch { resume(tid, signal); return false }  // vanished
        let address = regs[.rip] &- 1
        guard let emulation = probes[address] else {
            if process.retiredBreakpoints.contains(address) {
                regs[.rip] = address  // a probe removed after this thread hit it
                try regs.set(tid)
                resume(tid, 0)
            } else {
                resume(tid, SIGTRAP)  // the program's own int3
            }
            return false
        }
        hitCount += 1
        onHit(Hit(tid: tid, address: address,
                  arguments: [regs[.rdi], regs[.rsi], regs[.rdx], regs[.rcx], regs[.r8], regs[.r9]]))
        // Stop here: the thread stays parked at the int3 (its SIGTRAP stop reported, not
        // resumed); `detach()` moves it back onto the instruction, which then runs natively.
        if until() {
            parked = (tid, address, emulation)
            return true
        }
        try finishHit(tid, address, emulation, regs)
        return false
    }

    /// Emulates the probed instruction for a thread stopped at its int3, and resumes it.
    private func finishHit(_ tid: Int32, _ address: UInt64, _ emulation: Emulation,
                           _ registers: Registers? = nil) throws(UtapError) {
        var regs: Registers
        if let registers { regs = registers } else { regs = try Registers.get(tid) }
        try Self.apply(emulation, at: address, to: &regs) { (value, at) throws(UtapError) in
            try pokeStack(tid, at, value)
        }
        try regs.set(tid)
        resume(tid, 0)
    }

    /// Carries out `emulation` (the instruction at `address`) on `regs`; `push(value, at)`
    /// writes the 8-byte stack word before rsp moves.
    public static func apply(_ emulation: Emulation, at address: UInt64, to regs: inout Registers,
                             push: (UInt64, UInt64) throws(UtapError) -> Void) throws(UtapError) {
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

    /// Writes one stack word of a stopped thread (PTRACE_POKEDATA: one call, no alignment
    /// needed on x86, and the thread is already in a ptrace-stop).
    private func pokeStack(_ tid: Int32, _ address: UInt64, _ value: UInt64) throws(UtapError) {
        if utap_ptrace(PT.POKEDATA, tid, UnsafeMutableRawPointer(bitPattern: UInt(address)),
                       UnsafeMutableRawPointer(bitPattern: UInt(value))) == 0 { return }
        throw .runtime("thread \(tid): cannot write the stack at \(hex(address)): \(String(cString: strerror(errno)))",
                       hint: "the emulated push/call would fault; faulting it for real needs out-of-line stepping (not supported yet)")
    }

    private func resume(_ tid: Int32, _ signal: Int32) {
        _ = utap_ptrace(PT.CONT, tid, nil, UnsafeMutableRawPointer(bitPattern: UInt(signal)))
    }

    private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}
