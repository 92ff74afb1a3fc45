import ArgumentParser
import Glibc
import UtapBPF
import UtapCore
import UtapOutput

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream every hit of the given probes.",
        usage: "utap trace [OPTIONS] PROBE... [-- COMMAND [ARG...]]",
        discussion: """
        PROBE is [TARGET:]LOCATION[%return] [FIELD...], one shell word each.
          TARGET    ELF path or library name (libc, libssl.so.3);
                    omitted: the COMMAND's executable
          LOCATION  SYMBOL, GLOB (str*), SYMBOL+OFFSET or 0xADDRESS
          FIELD     [NAME=]SOURCE[:TYPE]
          SOURCE    arg0..arg5, or ret on %return probes
          TYPE      s8 s16 s32 s64 (default) u8 u16 u32 u64 x ptr bool
                    str (64 bytes) str[N] (N up to 255)
        A USDT probe is usdt:TARGET:PROVIDER:NAME [NAME=argN[:TYPE]...]; without
        fields it records every argument ('utap list TARGET' shows the probes).

        An entry probe on a function that starts with endbr64 goes just
        after it (same state, much cheaper); SYMBOL+0 probes the first byte.
        Without -p or COMMAND, every process that maps the file is traced (bpf).
        --backend ptrace (or auto, when BPF is refused) uses int3 breakpoints
        and ptrace instead: one process, same output, more cost per hit.
        With COMMAND, utap exits with its status; Ctrl-C or SIGTERM ends the
        trace and is passed on to the command.

        Examples:
          utap trace 'libc:malloc size=arg0:u64' 'libc:malloc%return ret:x' -- ./app
          utap trace -p 4242 '/usr/sbin/nginx:ngx_http_process_request_line'
          utap trace --format json -o open.jsonl 'libc:open* path=arg0:str' -- ls
          utap trace --duration 5 'libc:write fd=arg0:s32 len=arg2:u64'
          utap trace --filter 'arg2 > 4096 && comm == "nginx"' 'libc:write len=arg2'
          utap trace --stack -p 4242 'libc:abort'
          utap trace -p 4242 'usdt:/usr/bin/python3.11:python:gc__start gen=arg0'
          utap trace --backend ptrace -p 4242 'libc:malloc size=arg0:u64'
        """)

    @OptionGroup var options: SessionOptions

    @Flag(help: "Add the user stack to each event, symbolized (walked by frame pointers).")
    var stack = false

    @Option(parsing: .unconditional, help: "Stop after N events.")
    var maxEvents: UInt64?

    @Option(parsing: .unconditional, help: "Ring buffer size in MiB (bpf), a power of two, split over the CPUs' rings.")
    var bufferMb: Int = 32

    func run() throws {
        try options.check("trace")
        if maxEvents == 0 {
            throw UtapError.usage("--max-events 0: must be at least 1")
        }
        if bufferMb <= 0 || bufferMb & (bufferMb - 1) != 0 || bufferMb > 1024 {
            throw UtapError.usage("--buffer-mb \(bufferMb): must be a power of two from 1 to 1024")
        }
        // TIME counts from before the first probe goes in: a probe attached early fires
        // while the others are still attaching.
        let startNs = monotonicNow()
        let live = try options.start(mode: .stream, userStacks: stack, bufferBytes: bufferMb << 20)
        let descriptors = live.descriptors
        let stderrBuffer = OutputBuffer(fd: STDERR_FILENO, ownsFD: false)
        let writer: EventWriter = options.format == .json
            ? JSONWriter(probes: descriptors, output: live.output)
            : TextWriter(probes: descriptors, output: live.output, summaryOutput: stderrBuffer, startNs: startNs)
        // The text summary always reaches the user on stderr, whatever the stream's format.
        let stderrSummary = options.format == .json
            ? TextWriter(probes: descriptors, output: stderrBuffer, startNs: startNs) : nil
        let runner = TraceRunner(live: live, writer: writer, summaryWriter: stderrSummary,
                                 maxEvents: maxEvents, duration: options.duration)
        live.command?.release()
        throw ExitCode(try runner.run())
    }
}
