import CLibbpf
import CUtapSys
import Glibc
import UtapABI
import UtapCore

/// Where the reader stands with the events the BPF programs stage on each CPU
/// (bpf/utap.bpf.c, struct stage): the time of each stage's oldest event is mapped here,
/// and a stage that has waited longer than `maxWaitNs` is sent into its CPU's ring by
/// running `utap_flush` there (BPF_PROG_TEST_RUN on a chosen CPU). Under load the stages
/// fill and send themselves, and no CPU is interrupted.
///
/// Order: a read goes no further than the oldest staged event (`watermark`). So the
/// records of one thread still come out in the order it made them (see `RingSet`): its
/// earlier event is either in a ring or staged, and then the watermark stops before its
/// later one.
public final class StageFlusher {
    private let program: Int32
    private let flags: UnsafeRawPointer
    private let mappedBytes: Int
    private let cpus: Int
    /// How many times a CPU whose stage a writer holds (the flush interrupted it) is asked
    /// again; the writer, with preemption off, is done within a microsecond.
    static let busyRetries = 100

    /// Whether the programs stage events: where the kernel lets them (`kernelAllows`),
    /// unless `UTAP_BPF_STAGING=0` turns it off.
    static var enabled: Bool {
        getenv("UTAP_BPF_STAGING").map { String(cString: $0) } != "0" && kernelAllows
    }

    /// The programs keep preemption off while they hold a stage: bpf_preempt_disable,
    /// Linux 6.10.
    public static var kernelAllows: Bool { kernelIsAtLeast(6, 10) }

    /// - Parameters:
    ///   - program: the loaded `utap_flush` program.
    ///   - stagedMap: the `staged` map (BPF_F_MMAPABLE), one flag per possible CPU.
    init(program: Int32, stagedMap: Int32, cpus: Int) throws(UtapError) {
        let bytes = (cpus * MemoryLayout<utap_staged_flag>.stride + RingSet.pageSize - 1) & ~(RingSet.pageSize - 1)
        guard let mapped = mmap(nil, bytes, PROT_READ, MAP_SHARED, stagedMap, 0), mapped != MAP_FAILED else {
            throw LibbpfLog.error("cannot map the staged-events flags", errno: errno)
        }
        self.program = program
        self.flags = UnsafeRawPointer(mapped)
        self.mappedBytes = bytes
        self.cpus = cpus
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: flags), mappedBytes)
    }

    /// How long an event may wait in a stage before the reader has it sent: the delivery
    /// delay it adds to the reader's poll interval.
    static let maxWaitNs: UInt64 = 2_000_000

    /// The time a read may hand over events up to, given that it is `now`: `now`, or the
    /// oldest event still staged, after sending the stages older than `maxWaitNs`; all of
    /// them when `all` (the probes are gone). 0 when a stage stayed held. Throws when
    /// the kernel refuses to run the flush: the staged events could never be read.
    func watermark(now: UInt64, all: Bool = false) throws(UtapError) -> UInt64 {
        var watermark = now
        for cpu in 0..<cpus {
            let flag = flags + cpu * MemoryLayout<utap_staged_flag>.stride
            var oldest = utap_load_acquire_u64(flag)
            if oldest == 0 { continue }
            if all || oldest &+ Self.maxWaitNs <= now {
                switch try flush(cpu: cpu) {
                case .sent: oldest = utap_load_acquire_u64(flag)
                case .held: return 0
                // Its events wait until it is back; the rest of the stream does not.
                case .offline: continue
                }
                if oldest == 0 { continue }
            }
            watermark = min(watermark, oldest)
        }
        return watermark
    }

    private enum Flush {
        case sent
        /// A writer the flush interrupted holds the stage, every time it was asked.
        case held
        /// The CPU is offline (ENXIO): nothing runs there.
        case offline
    }

    private func flush(cpu: Int) throws(UtapError) -> Flush {
        var opts = bpf_test_run_opts()
        opts.sz = MemoryLayout<bpf_test_run_opts>.size
        opts.cpu = UInt32(cpu)
        opts.flags = UInt32(BPF_F_TEST_RUN_ON_CPU)
        for _ in 0..<Self.busyRetries {
            opts.retval = 0
            guard bpf_prog_test_run_opts(program, &opts) == 0 else {
                if errno == ENXIO { return .offline }
                throw LibbpfLog.error("cannot send the events staged on CPU \(cpu)", errno: errno,
                                      hint: "UTAP_BPF_STAGING=0 writes every event to the ring directly")
            }
            if opts.retval == 0 { return .sent }
            sched_yield()
        }
        return .held
    }
}
