import UtapABI
import UtapCore

/// One attachment: a program at a file offset with a cookie that selects its configuration.
struct Attachment {
    var probe: Int
    var path: String
    var fileOffset: UInt64
    var semaphoreOffset: UInt64?
    var isReturn: Bool
    var config: utap_probe_config
}

extension Attachment {
    /// Attachments for a plan, in cookie order. Streamed return probes and every latency
    /// probe get a hidden entry program that remembers the entry time, so the return
    /// knows its latency.
    static func all(for plan: TracePlan) -> [Attachment] {
        var result: [Attachment] = []
        for (index, probe) in plan.probes.enumerated() {
            var config = utap_probe_config()
            config.probe = UInt32(index)
            var onReturn = probe.kind == .return
            switch plan.mode {
            case .stream:
                config.flags = UInt32(UTAP_PROBE_EMIT.rawValue) | (plan.userStacks ? UInt32(UTAP_PROBE_STACK.rawValue) : 0)
                    | (needsAllRegisters(probe.fields) ? UInt32(UTAP_PROBE_ALL_REGS.rawValue) : 0)
                    | (!plan.userStacks && onlyIntegers(probe.fields) ? UInt32(UTAP_PROBE_INTEGERS.rawValue) : 0)
                config.nfields = UInt32(probe.fields.count)
                withUnsafeMutableBytes(of: &config.fields) { raw in
                    let fields = raw.bindMemory(to: utap_field_config.self)
                    for (i, field) in probe.fields.enumerated() {
                        fields[i] = fieldConfig(field)
                    }
                }
            case .count(let byPid):
                config.flags = UInt32(UTAP_PROBE_COUNT.rawValue) | (byPid ? UInt32(UTAP_PROBE_BY_PID.rawValue) : 0)
            case .latency:
                config.flags = UInt32(UTAP_PROBE_HIST.rawValue)
                onReturn = true
            }
            if !plan.filter.isEmpty { config.flags |= UInt32(UTAP_PROBE_FILTERED.rawValue) }
            if plan.followForks { config.flags |= UInt32(UTAP_PROBE_FOLLOW.rawValue) }
            var countsOnly = false
            if case .count = plan.mode { countsOnly = true }
            // A count of hijacked returns keeps the entries too: past 64 pending calls of a
            // thread the kernel hijacks no more returns, and only the entry side can count
            // those as lost.
            if onReturn && (!countsOnly || probe.returnSites.isEmpty) {
                config.flags |= UInt32(UTAP_PROBE_POP_TS.rawValue)
                var push = utap_probe_config()
                push.flags = UInt32(UTAP_PROBE_PUSH_TS.rawValue) | (config.flags & UInt32(UTAP_PROBE_FOLLOW.rawValue))
                    | (probe.returnSites.isEmpty ? 0 : UInt32(UTAP_PROBE_SITES_MARK.rawValue))
                    | (config.flags & UInt32(UTAP_PROBE_HIST.rawValue))
                push.probe = UInt32(index)
                result.append(Attachment(probe: index, path: probe.path, fileOffset: probe.fileOffset,
                                         semaphoreOffset: probe.semaphoreOffset, isReturn: false, config: push))
            }
            if onReturn && !probe.returnSites.isEmpty {
                // The return is seen on each `ret`, by the entry program.
                config.flags |= UInt32(UTAP_PROBE_RET_SITE.rawValue)
                for site in probe.returnSites {
                    result.append(Attachment(probe: index, path: probe.path, fileOffset: site,
                                             semaphoreOffset: nil, isReturn: false, config: config))
                }
                continue
            }
            result.append(Attachment(probe: index, path: probe.path, fileOffset: probe.fileOffset,
                                     semaphoreOffset: probe.semaphoreOffset, isReturn: onReturn, config: config))
        }
        return result
    }

    static func fieldConfig(_ field: FieldSpec) -> utap_field_config {
        var c = utap_field_config()
        switch field.source {
        case .arg(let n):
            c.source = UInt8(n)
        case .ret:
            c.source = UInt8(UTAP_SRC_RET.rawValue)
        case .location(.register(let register)):
            if let slot = sourceSlot(register) {
                c.source = slot
            } else {
                c.location = UInt8(UTAP_LOC_REGISTER.rawValue)
                c.reg = UInt8(register.rawValue)
            }
        case .location(.memory(let base, let displacement, let size)):
            c.location = UInt8(UTAP_LOC_MEMORY.rawValue)
            c.reg = UInt8(base.rawValue)
            c.value = displacement
            c.size = UInt8(size)
        case .location(.constant(let value)):
            c.location = UInt8(UTAP_LOC_CONSTANT.rawValue)
            c.value = value
        }
        if case .string(let maxLength) = field.type {
            c.kind = UInt8(UTAP_FIELD_STR.rawValue)
            c.str_len = UInt16(maxLength + 2) // one byte past the limit shows truncation, plus the NUL
        } else {
            c.kind = UInt8(UTAP_FIELD_INT.rawValue)
        }
        return c
    }

    /// The registers the BPF programs read up front (enum utap_source), by slot: a field
    /// in one of them (an argument, USDT's `%edi`, a Go argument) needs no copy of struct
    /// pt_regs and takes the integer events' fast path.
    static let sourceRegisters: [Register] = [.rdi, .rsi, .rdx, .rcx, .r8, .r9, .rax, .rbx]

    static func sourceSlot(_ register: Register) -> UInt8? {
        sourceRegisters.firstIndex(of: register).map(UInt8.init)
    }

    /// Whether every field is an argument, the return value, a register read up front or
    /// a constant, read as an integer: such a record has a fixed size and is staged.
    static func onlyIntegers(_ fields: [FieldSpec]) -> Bool {
        fields.allSatisfy { field in
            if case .string = field.type { return false }
            return !readsOtherRegisters(field)
        }
    }

    /// Whether a field reads a register outside those read up front, or memory through
    /// one (the BPF side then copies all of struct pt_regs).
    static func needsAllRegisters(_ fields: [FieldSpec]) -> Bool {
        fields.contains(where: readsOtherRegisters)
    }

    private static func readsOtherRegisters(_ field: FieldSpec) -> Bool {
        switch field.source {
        case .arg, .ret, .location(.constant): return false
        case .location(.register(let register)): return sourceSlot(register) == nil
        case .location(.memory): return true
        }
    }
}
