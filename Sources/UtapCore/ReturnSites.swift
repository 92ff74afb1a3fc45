/// How a return probe observes the return.
public enum ReturnMode: String, CaseIterable, Sendable {
    /// `sites` for code that is unwound through (C++, Rust and Go) or switches stacks
    /// (ucontext coroutines), `hijack` otherwise.
    case auto
    /// A kernel uretprobe: the return address on the stack is replaced by a trampoline.
    /// Cheap, sees every return, but an unwinder walking through the frame (a C++
    /// exception, Go's stack growth) finds the trampoline and the program dies.
    case hijack
    /// An entry-side probe on every `ret` of the function (decoded with Zydis). The stack
    /// is never touched, so exceptions propagate normally; a tail call out of the function
    /// is not seen as its return.
    case sites
}

extension ProbeResolver {
    /// Places the return probes among `probes` (what `spec` resolved to) as `mode` says.
    /// On `ret` sites, a function without a `ret` (it never returns) cannot have a return
    /// probe: a glob leaves such functions out with one warning, a probe naming one is
    /// refused.
    public mutating func placeReturns(_ probes: [ResolvedProbe], of spec: ProbeSpec, mode: ReturnMode) throws(UtapError) -> [ResolvedProbe] {
        var placed: [ResolvedProbe] = [], skipped: [String] = []
        for probe in probes {
            if let probe = try placeReturn(probe, mode: mode) {
                placed.append(probe)
            } else {
                skipped.append(probe.function ?? probe.name)
            }
        }
        guard !skipped.isEmpty else { return placed }
        let shown = Self.firstFew(skipped)
        let never = "(it never returns, or only by tail calls)"
        guard case .glob(let pattern) = spec.location else {
            throw .usage("probe '\(spec.name)': \(shown) has no ret instruction \(never)", hint: "use --return-mode hijack")
        }
        guard !placed.isEmpty else {
            throw .usage("probe '\(spec.name)': no function matching '\(pattern)' has a ret instruction (\(shown))",
                         hint: "probe their entries; if they return by tail calls, use --return-mode hijack")
        }
        warnings.append("probe '\(spec.name)': \(skipped.count) of the functions matching '\(pattern)' have no ret "
                        + "instruction (they never return, or only by tail calls), left out: \(shown)")
        return placed
    }

    /// Puts a return probe on its function's `ret` instructions when `mode` says so; nil
    /// when it should and the function has none.
    private mutating func placeReturn(_ probe: ResolvedProbe, mode: ReturnMode) throws(UtapError) -> ResolvedProbe? {
        guard probe.kind == .return else { return probe }
        let image = try image(at: probe.path)
        guard mode == .sites || (mode == .auto && (Self.unwindsThroughFrames(image) || Self.switchesStacks(image))) else {
            return probe
        }
        guard let function = image.enclosingFunction(of: probe.address), function.size > 0,
              let code = image.bytes(atVirtualAddress: function.address, count: Int(clamping: function.size)),
              let returns = InstructionDecoder.returnInstructions(in: code) else {
            throw .usage("probe '\(probe.name)': cannot decode the code of \(probe.function ?? "the function") to find its returns",
                         hint: "use --return-mode hijack")
        }
        guard !returns.isEmpty else { return nil }
        var placed = probe
        placed.returnSites = try returns.map { (offset: Int) throws(UtapError) -> UInt64 in
            guard let fileOffset = image.fileOffset(ofVirtualAddress: function.address + UInt64(offset)) else {
                throw .usage("probe '\(probe.name)': a ret of \(function.name) is outside the file's segments")
            }
            return fileOffset
        }
        return placed
    }

    /// Code whose frames an unwinder walks through: C++ (exceptions), Rust (a panic unwinds
    /// to the thread's start, where join() reports it; through a hijacked frame it aborts
    /// the process with "failed to initiate panic") and Go (stack growth). Seen as a link
    /// to a C++ runtime or to libgcc_s (Rust's std links it for its unwinder, as libstdc++
    /// does), an unwinder linked in (static C++ and Rust), or Go's runtime.
    static func unwindsThroughFrames(_ image: ELFImage) -> Bool {
        image.needed.contains { $0.hasPrefix("libstdc++") || $0.hasPrefix("libc++") || $0.hasPrefix("libgcc_s") }
            || !image.functions(named: "_Unwind_RaiseException").isEmpty
            || image.isGoProgram
    }

    /// Code that switches stacks with ucontext (coroutines): a context saved inside a
    /// hijacked call holds the trampoline as its return address, and the kernel's
    /// uretprobes, which pair returns by stack order, kill the program when it resumes
    /// (the ptrace backend keeps such calls; a `hijack` by choice works there). Seen as
    /// an import of swapcontext, or swapcontext linked into a static program.
    static func switchesStacks(_ image: ELFImage) -> Bool {
        image.importedFunctions.contains("swapcontext")
            || (image.needed.isEmpty && !image.functions(named: "swapcontext").isEmpty)
    }
}
