import CUtapSys
import Glibc
import UtapCore

/// A page utap maps into the traced process for instructions run out of line
/// (ptrace-xol.md §0): 32-byte slots, each `[instruction][jmp back][int3 …]` (or without
/// the jump, for a stub that is single-stepped or transfers control itself). Slot 0 of every page
/// is the return trampoline (one int3) that hijacked return addresses point to.
struct OutOfLinePage: Equatable {
    static let size: UInt64 = 4096
    /// An instruction (at most 15 bytes) and a 5-byte jump back.
    static let slotSize: UInt64 = 32
    let base: UInt64
    /// Slots handed out so far, the trampoline included.
    var used: UInt64 = 1

    var trampoline: UInt64 { base }
    var isFull: Bool { used * Self.slotSize >= Self.size }

    /// Within reach of a rip-relative displacement from every byte of `address`'s
    /// instruction (a 32-bit signed offset, with margin for the instruction's length).
    func reaches(_ address: UInt64) -> Bool {
        let distance = address > base ? address - base : base - address
        return distance < (1 << 31) - 2 * Self.size
    }
}

extension TracedProcess {
    /// The trampoline address, creating the first page when there is none.
    func trampoline(using tid: Int32) throws(UtapError) -> UInt64 {
        if let page = outOfLinePages.first { return page.trampoline }
        return try addPage(near: nil, using: tid).trampoline
    }

    /// Where a thread whose rip is `address` belongs, when that is inside a native stub:
    /// at its start (instruction not completed) or at its jump back (completed).
    func stubPosition(of address: UInt64) -> StubPosition? {
        let slot = address & ~(OutOfLinePage.slotSize - 1)
        guard let (probe, length) = stubs[slot] else { return nil }
        if address == slot { return StubPosition(address: probe, atStart: true, original: probe) }
        if address == slot + UInt64(length) { return StubPosition(address: probe, atStart: false, original: probe + UInt64(length)) }
        return nil
    }

    /// True when `address` is a trampoline.
    func isTrampoline(_ address: UInt64) -> Bool {
        outOfLinePages.contains { $0.trampoline == address }
    }

    /// A fresh stub slot within rip-relative reach of `address`, filled with `bytes` and
    /// int3s; the slot's address.
    func stubSlot(near address: UInt64, bytes: [UInt8], using tid: Int32) throws(UtapError) -> UInt64 {
        precondition(bytes.count < Int(OutOfLinePage.slotSize))
        var index = outOfLinePages.firstIndex { !$0.isFull && $0.reaches(address) }
        if index == nil {
            _ = try addPage(near: address, using: tid)
            index = outOfLinePages.count - 1
        }
        let slot = outOfLinePages[index!].base + outOfLinePages[index!].used * OutOfLinePage.slotSize
        let filled = bytes + [UInt8](repeating: 0xCC, count: Int(OutOfLinePage.slotSize) - bytes.count)
        try write(filled, at: slot)
        outOfLinePages[index!].used += 1
        return slot
    }

    /// Maps one page by making thread `tid` (stopped at a probe's int3, so at an
    /// instruction boundary and not inside a system call) run `mmap` at the program's entry
    /// point, then puts back its code, registers and signal mask.
    private func addPage(near address: UInt64?, using tid: Int32) throws(UtapError) -> OutOfLinePage {
        let candidates = address.map { freeAddresses(near: $0) } ?? [0]
        for hint in candidates {
            let result = try runMmap(hint: hint, fixed: address != nil, using: tid)
            let errorValue = Int64(bitPattern: result)
            if errorValue < 0 && errorValue > -4096 {
                if -errorValue == Int64(EEXIST) { continue }  // taken meanwhile: next gap
                throw .runtime("pid \(pid): cannot map the out-of-line page: mmap: \(String(cString: strerror(Int32(-errorValue))))")
            }
            let page = OutOfLinePage(base: result)
            try write([0xCC] + [UInt8](repeating: 0xCC, count: Int(OutOfLinePage.slotSize) - 1), at: page.base)
            outOfLinePages.append(page)
            return page
        }
        throw .runtime("pid \(pid): no free address within 2 GiB of \(hex(address ?? 0)) for the out-of-line page")
    }

    /// Page-aligned free addresses next to existing mappings, nearest to `address` first.
    func freeAddresses(near address: UInt64) -> [UInt64] {
        guard let maps = try? ProcMaps.read(pid: pid) else { return [] }
        var free: [UInt64] = []
        let sorted = maps.sorted { $0.start < $1.start }
        for (i, entry) in sorted.enumerated() {
            let nextStart = i + 1 < sorted.count ? sorted[i + 1].start : 0x7fff_ffff_f000
            if nextStart >= entry.end + OutOfLinePage.size { free.append(entry.end) }  // just above it
            let previousEnd = i > 0 ? sorted[i - 1].end : 0x10000
            if entry.start >= previousEnd + OutOfLinePage.size, entry.start >= 0x10000 + OutOfLinePage.size {
                free.append(entry.start - OutOfLinePage.size)  // just below it
            }
        }
        return free.filter { OutOfLinePage(base: $0).reaches(address) }
            .sorted { ($0 > address ? $0 - address : address - $0) < ($1 > address ? $1 - address : address - $1) }
    }

    /// Makes `tid` execute `mmap(hint, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS
    /// [|MAP_FIXED_NOREPLACE], -1, 0)`; returns rax.
    private func runMmap(hint: UInt64, fixed: Bool, using tid: Int32) throws(UtapError) -> UInt64 {
        guard let entry = Self.entryPoint(pid) else {
            throw .runtime("pid \(pid): cannot read the program's entry point from /proc/\(pid)/auxv")
        }
        let saved = try Registers.get(tid)
        let savedMask = try PT.signalMask(tid)
        let savedCode = try read(entry, count: 3)
        try PT.setSignalMask(tid, PT.blockAllButFaults)
        try write([0x0F, 0x05, 0xCC], at: entry)  // syscall; int3
        defer {
            try? write(savedCode, at: entry)
            try? saved.set(tid)
            try? PT.setSignalMask(tid, savedMask)
        }
        var regs = saved
        regs[.rip] = entry
        regs[.rax] = 9  // mmap
        regs[.rdi] = hint
        regs[.rsi] = OutOfLinePage.size
        regs[.rdx] = UInt64(PROT_READ | PROT_EXEC)
        regs[.r10] = UInt64(MAP_PRIVATE | MAP_ANONYMOUS) | (fixed ? 0x10_0000 : 0)  // MAP_FIXED_NOREPLACE
        regs[.r8] = UInt64.max
        regs[.r9] = 0
        regs[.origRax] = UInt64.max  // not in a system call: no restart
        regs[.eflags] &= ~UInt64(0x100 | 0x400)  // TF, DF
        try regs.set(tid)
        var resumeSignal: Int32 = 0
        while true {
            guard PT.resume(PT.CONT, tid, signal: resumeSignal) else {
                throw .runtime("pid \(pid): thread \(tid) vanished while mapping the out-of-line page")
            }
            resumeSignal = 0
            var status: Int32 = 0
            while waitpid(tid, &status, PT.WALL) < 0 {
                if errno != EINTR { throw .runtime("pid \(pid): thread \(tid) vanished while mapping the out-of-line page") }
            }
            guard status & 0x7F == 0x7F else {
                throw .runtime("pid \(pid): thread \(tid) exited while mapping the out-of-line page")
            }
            let signal = (status >> 8) & 0xFF, event = (status >> 16) & 0xFF
            if event == 0 && signal == SIGTRAP, (try? Registers.get(tid))?[.rip] == entry + 3 {
                return try Registers.get(tid)[.rax]
            }
            // Only SIGKILL/STOP and the faults get through the mask; a fault here is fatal
            // anyway, a stop is resumed.
            if event == 0 && signal != SIGSTOP && signal != SIGTRAP { resumeSignal = signal }
        }
    }

    /// AT_ENTRY from /proc/PID/auxv.
    static func entryPoint(_ pid: Int32) -> UInt64? {
        let fd = open("/proc/\(pid)/auxv", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var words = [UInt64](repeating: 0, count: 128)
        let got = words.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard got > 0 else { return nil }
        for i in stride(from: 0, to: got / 8 - 1, by: 2) where words[i] == 9 /* AT_ENTRY */ {
            return words[i + 1]
        }
        return nil
    }

    private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
}
