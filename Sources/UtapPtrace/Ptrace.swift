import CUtapSys
import Glibc
import UtapCore

// Thin, typed wrappers over ptrace(2) requests the engine uses. Every call must come from
// the tracer thread (see TracedProcess).

/// ptrace(2) request and option numbers (linux/ptrace.h), as Int32 for `utap_ptrace`.
enum PT {
    static let PEEKTEXT: Int32 = 1
    static let POKETEXT: Int32 = 4
    static let POKEDATA: Int32 = 5
    static let CONT: Int32 = 7
    static let SINGLESTEP: Int32 = 9
    static let GETREGS: Int32 = 12
    static let SETREGS: Int32 = 13
    static let DETACH: Int32 = 17
    static let GETEVENTMSG: Int32 = 0x4201
    static let GETSIGINFO: Int32 = 0x4202
    static let SETSIGINFO: Int32 = 0x4203
    static let SEIZE: Int32 = 0x4206
    static let INTERRUPT: Int32 = 0x4207
    static let LISTEN: Int32 = 0x4208
    static let GETSIGMASK: Int32 = 0x420a
    static let SETSIGMASK: Int32 = 0x420b
    static let O_TRACEFORK: Int32 = 1 << 1
    static let O_TRACEVFORK: Int32 = 1 << 2
    static let O_TRACECLONE: Int32 = 1 << 3
    static let O_TRACEEXEC: Int32 = 1 << 4
    static let O_EXITKILL: Int32 = 1 << 20
    static let EVENT_FORK: Int32 = 1
    static let EVENT_VFORK: Int32 = 2
    static let EVENT_CLONE: Int32 = 3
    static let EVENT_EXEC: Int32 = 4
    static let EVENT_STOP: Int32 = 128
    static let WALL: Int32 = 0x4000_0000

    /// Resumes `tid` with `request` (CONT, SINGLESTEP, DETACH), delivering `signal`.
    @discardableResult
    static func resume(_ request: Int32, _ tid: Int32, signal: Int32 = 0) -> Bool {
        utap_ptrace(request, tid, nil, UnsafeMutableRawPointer(bitPattern: UInt(signal))) == 0
    }

    /// The message of the last ptrace event (new tid of a clone, old tid of an exec).
    static func eventMessage(_ tid: Int32) -> Int32? {
        var message: UInt = 0
        guard utap_ptrace(GETEVENTMSG, tid, nil, &message) == 0 else { return nil }
        return Int32(truncatingIfNeeded: message)
    }

    /// The blocked-signal mask of a stopped thread (bit N-1 is signal N).
    static func signalMask(_ tid: Int32) throws(UtapError) -> UInt64 {
        var mask: UInt64 = 0
        if utap_ptrace(GETSIGMASK, tid, UnsafeMutableRawPointer(bitPattern: 8), &mask) < 0 {
            throw .runtime("thread \(tid): PTRACE_GETSIGMASK: \(String(cString: strerror(errno)))")
        }
        return mask
    }

    static func setSignalMask(_ tid: Int32, _ mask: UInt64) throws(UtapError) {
        var value = mask
        if utap_ptrace(SETSIGMASK, tid, UnsafeMutableRawPointer(bitPattern: 8), &value) < 0 {
            throw .runtime("thread \(tid): PTRACE_SETSIGMASK: \(String(cString: strerror(errno)))")
        }
    }

    /// Bit of `signal` in a kernel sigset.
    static func bit(_ signal: Int32) -> UInt64 { 1 << UInt64(signal - 1) }

    /// Signals a thread must never have blocked while utap runs code in it: the faults (a
    /// blocked forced signal is reset to its default action) and the trap utap relies on.
    static let neverBlocked = bit(SIGKILL) | bit(SIGSTOP) | bit(SIGTRAP) | bit(SIGSEGV) | bit(SIGBUS)
        | bit(SIGILL) | bit(SIGFPE)
    /// A mask that blocks every other signal.
    static let blockAllButFaults = ~neverBlocked
}

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

    /// The System V integer argument registers, in order.
    public static let argumentRegisters: [Register] = [.rdi, .rsi, .rdx, .rcx, .r8, .r9]

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

/// A `siginfo_t` (PTRACE_GETSIGINFO), kept whole so it can be written back changed.
public struct SignalInfo: Equatable, Sendable {
    /// The 128 bytes, as 32-bit words.
    var raw: [Int32]

    public var signal: Int32 { raw[0] }
    public var errno: Int32 { raw[1] }
    public var code: Int32 { raw[2] }
    /// `si_addr` of a fault (SIGSEGV, SIGBUS, SIGILL, SIGFPE): the union's first word.
    public var faultAddress: UInt64 {
        get { UInt64(UInt32(bitPattern: raw[4])) | UInt64(UInt32(bitPattern: raw[5])) << 32 }
        set {
            raw[4] = Int32(bitPattern: UInt32(truncatingIfNeeded: newValue))
            raw[5] = Int32(bitPattern: UInt32(truncatingIfNeeded: newValue >> 32))
        }
    }

    /// `si_code` of an int3 (and of other kernel-generated signals).
    public static let kernel: Int32 = 0x80
    /// `si_code` of a single-step trap.
    public static let trace: Int32 = 2

    public static func get(_ tid: Int32) throws(UtapError) -> SignalInfo {
        var raw = [Int32](repeating: 0, count: 32)  // siginfo_t is 128 bytes
        let rc = raw.withUnsafeMutableBytes { utap_ptrace(PT.GETSIGINFO, tid, nil, $0.baseAddress) }
        if rc < 0 { throw .runtime("thread \(tid): PTRACE_GETSIGINFO: \(String(cString: strerror(Glibc.errno)))") }
        return SignalInfo(raw: raw)
    }

    /// PTRACE_SETSIGINFO: the signal delivered on resume carries this information.
    func set(_ tid: Int32) throws(UtapError) {
        var copy = raw
        let rc = copy.withUnsafeMutableBytes { utap_ptrace(PT.SETSIGINFO, tid, nil, $0.baseAddress) }
        if rc < 0 { throw .runtime("thread \(tid): PTRACE_SETSIGINFO: \(String(cString: strerror(Glibc.errno)))") }
    }
}
