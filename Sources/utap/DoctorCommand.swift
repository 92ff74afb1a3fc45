import ArgumentParser
import CLibbpf
import Glibc
import UtapBPF
import UtapCore
import UtapPtrace

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check what this machine supports and which backend 'auto' picks.",
        discussion: "Each line is one check; the last says which backend --backend auto would use and why.")

    private struct Check {
        var ok: Bool
        var what: String
    }

    func run() throws {
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let machine = withUnsafeBytes(of: uts.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        print("utap doctor: kernel \(release) \(machine)")

        let caps = Capabilities.current()
        let capNames = [(Capabilities.bpf, "CAP_BPF"), (Capabilities.perfmon, "CAP_PERFMON"),
                        (Capabilities.sysAdmin, "CAP_SYS_ADMIN"), (Capabilities.sysPtrace, "CAP_SYS_PTRACE")]
        let held = capNames.filter { caps.has($0.0) }.map(\.1)
        let missing = capNames.filter { !caps.has($0.0) }.map(\.1)

        var bpfChecks: [Check] = [
            Check(ok: caps.canUseBPF, what: "capabilities: have \(held.isEmpty ? "none" : held.joined(separator: " "))"
                  + (missing.isEmpty ? "" : "; missing \(missing.joined(separator: " "))")),
            Check(ok: libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_KPROBE, nil) == 1, what: "bpf() syscall loads uprobe programs"),
            Check(ok: access("/sys/bus/event_source/devices/uprobe/type", R_OK) == 0, what: "uprobe perf PMU (/sys/bus/event_source/devices/uprobe)"),
            Check(ok: libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nil) == 1
                    && libbpf_probe_bpf_map_type(BPF_MAP_TYPE_ARRAY_OF_MAPS, nil) == 1,
                  what: "BPF ring buffers, one per CPU (ring buffer and array-of-maps map types)"),
            Check(ok: libbpf_probe_bpf_helper(BPF_PROG_TYPE_KPROBE, BPF_FUNC_get_attach_cookie, nil) == 1, what: "attach cookies (bpf_get_attach_cookie)"),
            Check(ok: access("/sys/kernel/btf/vmlinux", R_OK) == 0, what: "kernel BTF (/sys/kernel/btf/vmlinux)"),
        ]
        bpfChecks.append(roundTrip(BPFBackend()))
        let path = AttachPath.preferred
        for check in bpfChecks {
            print("  \(check.ok ? "ok  " : "FAIL")  \(check.what)")
        }
        print("  --    attach path: \(path == .multiLink ? "uprobe multi-links (Linux 6.6+)" : "one perf event per probe")")
        print("  --    integer events: " + (StageFlusher.kernelAllows ? "batched per CPU (Linux 6.10+; UTAP_BPF_STAGING=0 turns it off)" : "one ring record each (batches need Linux 6.10)"))

        let scope = (try? readTextFile("/proc/sys/kernel/yama/ptrace_scope"))?.trimmingTrailingWhitespace() ?? "absent"
        let ptraceChecks = [
            Check(ok: caps.has(Capabilities.sysPtrace) && scope != "3",
                  what: "ptrace: CAP_SYS_PTRACE \(caps.has(Capabilities.sysPtrace) ? "held" : "missing (own processes only)"), yama ptrace_scope=\(scope)"),
            roundTrip(PtraceBackend()),
        ]
        for check in ptraceChecks {
            print("  \(check.ok ? "ok  " : "FAIL")  \(check.what)")
        }
        let device = PtraceBackend.wakeLatencyDevice
        print("  --    ptrace wake-up: " + (access(device, W_OK) == 0
            ? "idle CPUs kept awake while hits come back to back (\(device))"
            : "no \(device) to write: each hit waits for sleeping CPUs to wake"))

        if let failed = bpfChecks.first(where: { !$0.ok }) {
            if ptraceChecks.allSatisfy(\.ok) {
                print("backend auto picks: ptrace for -p PID and -- COMMAND (bpf unusable: \(failed.what)); tracing every process needs bpf")
                return
            }
            print("backend auto picks: none (bpf unusable: \(failed.what); ptrace unusable: \(ptraceChecks.first { !$0.ok }!.what))")
            throw ExitCode(1)
        }
        print("backend auto picks: bpf (every bpf check passed)")
    }

    /// Starts /bin/true held before exec, probes libc's exit in it with `backend` and reads
    /// the event back: the whole path a trace uses. (utap's BPF programs ignore utap's own
    /// process, so it cannot probe itself.)
    private func roundTrip(_ backend: TracingBackend) -> Check {
        let what = "\(backend.name) round trip"
        do {
            let command = try LaunchedCommand(["true"])
            var resolver = ProbeResolver(pid: nil, executable: command.executable)
            let probes = try resolver.resolve(try ProbeParser.parse("libc:exit code=arg0:s32"))
            let session: TraceSession
            do {
                var plan = TracePlan(probes: probes, scope: .process(command.pid), bufferBytes: 1 << 20)
                plan.startsAtExec = true
                session = try backend.attach(plan)
            } catch {
                command.abandon()
                throw error
            }
            command.release()
            var seen = 0
            for _ in 0..<100 where seen == 0 {
                seen += try session.poll(timeoutMs: 10) { _ in }
            }
            session.detach()
            // The ptrace backend reaps the command itself.
            if let status = session.tracedExitStatus { command.recordExit(waitStatus: status) }
            _ = command.waitForExit()
            return Check(ok: seen == 1, what: "\(what): probed libc:exit in \(command.executable), \(seen) of 1 call seen")
        } catch let error as UtapError {
            return Check(ok: false, what: "\(what): \(error.message)")
        } catch {
            return Check(ok: false, what: "\(what): \(error)")
        }
    }
}

extension String {
    func trimmingTrailingWhitespace() -> String {
        var s = self
        while let last = s.last, last.isWhitespace { s.removeLast() }
        return s
    }
}
