#!/bin/bash
# Regenerates the committed binary seeds of fuzz/corpus (the text seeds of ProbeSpec and
# the argument specs of SDTNotes are written by hand). Run from the repository root:
#     bash fuzz/make-seeds.sh
# Seeds only start the fuzzer off; the ones committed came from Debian 12 (gcc 12, glibc
# 2.36), and another machine makes different but equally good ones.
set -euo pipefail
corpus=fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
libc=/lib/x86_64-linux-gnu/libc.so.6
# Page alignment of 16 bytes keeps the ELF seeds a few KB instead of a few pages each.
compact=(-Os -fno-asynchronous-unwind-tables -Wl,-z,max-page-size=16,-z,noseparate-code,--build-id)

mkdir -p "$corpus"/{ELFImage,SDTNotes,Instruction,RecordDecoder,ProcMaps}

# ELF files: a static executable with USDT notes (one semaphore), a shared library with
# versioned names, an IFUNC, an alias, DT_NEEDED and DT_RUNPATH (and a stripped one with
# DT_RPATH), the demo and usdt test targets, a truncated file and foreign headers.
cat > "$work/sdt_guarded.c" <<'EOF'
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
unsigned short app_tick_semaphore __attribute__((section(".probes"), used));
void tick(long a, int b, char c, short *p) {
    if (app_tick_semaphore) STAP_PROBE4(app, tick, a, b, c, p[1]);
}
EOF
cat > "$work/sdt_plain.c" <<'EOF'
#include <sys/sdt.h>
long counter;
void tock(unsigned char x, long *q) {
    STAP_PROBE3(app, plain, counter, 5, q[x]);
    STAP_PROBE(app, none);
}
EOF
cat > "$work/lib.c" <<'EOF'
extern int puts(const char *);
int old_f(int x) { return x + 1; }
int new_f(int x) { return x + 2; }
__asm__(".symver old_f,f@V1");
__asm__(".symver new_f,f@@V2");
static int g_impl(int x) { return x * 3; }
static void *resolve_g(void) { return (void *)g_impl; }
int g(int) __attribute__((ifunc("resolve_g")));
int h(int x) { return g(x) + new_f(x) + puts("h"); }
int h_alias(int) __attribute__((alias("h")));
EOF
printf 'V1 { global: f; h; h_alias; g; local: *; };\nV2 { global: f; } V1;\n' > "$work/lib.map"
gcc "${compact[@]}" -nostdlib -static -Wl,-e,tick "$work/sdt_guarded.c" "$work/sdt_plain.c" -o "$work/sdt.static"
gcc "${compact[@]}" -shared -fPIC -nostdlib -Wl,--version-script="$work/lib.map" \
    -Wl,-rpath,'$ORIGIN/lib::/opt/x' -Wl,--enable-new-dtags "$work/lib.c" -Wl,--no-as-needed -lc -o "$work/lib.so"
gcc "${compact[@]}" -shared -fPIC -nostdlib -Wl,--version-script="$work/lib.map" -s \
    -Wl,-rpath,/usr/local/lib -Wl,--disable-new-dtags "$work/lib.c" -Wl,--no-as-needed -lc -o "$work/lib-rpath-stripped.so"
for target in demo usdt; do
    gcc "${compact[@]}" -fcf-protection=full -Itests/targets "tests/targets/$target.c" -o "$work/$target" -lpthread
done
strip -o "$work/demo.stripped" "$work/demo"
head -c 1024 "$work/demo" > "$work/demo.truncated"
# The 64-byte header of lib.so made AArch64 (e_machine 183), and made 32-bit (EI_CLASS 1).
head -c 64 "$work/lib.so" | python3 -c 'import sys; h = bytearray(sys.stdin.buffer.read()); h[18:20] = (183).to_bytes(2, "little"); sys.stdout.buffer.write(h)' > "$work/header.aarch64"
head -c 64 "$work/lib.so" | python3 -c 'import sys; h = bytearray(sys.stdin.buffer.read()); h[4] = 1; sys.stdout.buffer.write(h)' > "$work/header.elf32"
for seed in sdt.static lib.so lib-rpath-stripped.so demo demo.stripped demo.truncated header.aarch64 header.elf32; do
    cp "$work/$seed" "$corpus/ELFImage/$seed"
done
for seed in sdt.static usdt; do
    cp "$work/$seed" "$corpus/SDTNotes/$seed"
done

# Instructions: the first 16 bytes of libc's code at the first site of each of its most
# common mnemonics, after the 8-byte ELF address and an 8-byte stub address (in reach of
# a rip-relative operand for every other seed, out of reach for the rest).
objdump -d "$libc" | python3 -c '
import re, struct, sys
lines = [m.groups() for m in (re.match(r"\s+([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(\S+)", l) for l in sys.stdin) if m]
stream = {int(a, 16): bytes.fromhex(b) for a, b, _ in lines}
seen = []
for address, _, mnemonic in lines:
    if mnemonic in seen or len(seen) == 32:
        continue
    seen.append(mnemonic)
    start = int(address, 16)
    code, at = b"", start
    while len(code) < 16 and at in stream:
        code += stream[at]
        at += len(stream[at])
    stub = start + 0x10000 if len(seen) % 2 else 0x7ffff7ff0000
    with open(f"'"$corpus"'/Instruction/{mnemonic}", "wb") as f:
        f.write(struct.pack("<QQ", start, stub) + code[:16])
'
# And the forms InstructionAnalysis treats specially that libc's first sites may miss.
python3 - "$corpus/Instruction" <<'EOF'
import struct, sys
forms = {
    "endbr64": "f30f1efa", "lea-rip": "488d05f0ffffff", "sub-rsp-imm8": "4883ec80",
    "sub-rsp-imm32": "4881ec00100000", "mov-rsp-rbp": "4889e5", "push-r12": "4154",
    "ret-imm16": "c20800", "bnd-jmp": "f2e900000000", "jrcxz": "e3fe", "loop": "e2fe",
    "pushf": "9c", "rep-movsb": "f3a4", "jcc-rel32": "0f8410000000", "call-indirect": "ff15f0ffffff",
    "jmp-indirect": "ff25f0ffffff", "addr32-lea-rip": "678d0500000000", "int3": "cc",
}
for name, code in forms.items():
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        f.write(struct.pack("<QQ", 0x401000, 0x7ffff7ff0000 if "rip" in name else 0x402000) + bytes.fromhex(code))
EOF

# Ring-buffer records (struct utap_event, utap_abi.h) for the harness's four probes:
# no fields; six integers; integers and a string read or not; strings cut at their limits;
# a return with latency; a user stack with libc's build ID; an unknown probe.
build_id=$(readelf -n "$libc" | sed -n 's/.*Build ID: //p')
malloc_offset=$(readelf -sW "$libc" | awk '$8 == "malloc@@GLIBC_2.2.5" { print $2 }')
python3 - "$corpus/RecordDecoder" "$build_id" "$malloc_offset" <<'EOF'
import struct, sys
out, build_id, malloc = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3], 16)
RETURN, LATENCY, STACK = 1, 2, 4

def record(name, probe, values, tail=b"", flags=0, comm=b"demo"):
    body = b"".join(struct.pack("<Q", v & (2**64 - 1)) for v in values) + tail
    header = struct.pack("<QQIIIHH16s", 123456789, 52500 if flags & LATENCY else 0, 4242, 4243,
                         probe, 48 + len(body), flags, comm)
    with open(f"{out}/{name}", "wb") as f:
        f.write(header + body)

def string(offset, text):
    # (offset << 32) | bytes read including the NUL, as bpf_probe_read_user_str returns.
    return offset << 32 | (len(text) + 1)

record("no-fields", 0, [])
record("integers", 1, [-1, -300, -70000, -(2**40), 255, 65535])
hello = b"hello\0"
record("string", 2, [2**32 + 5, 2**63, 0xdead, 0x7ffd0000, 1, string(96, b"hello")], hello)
record("string-unread", 2, [1, 2, 3, 4, 0, 96 << 32 | (2**32 - 14)], struct.pack("<Q", 0x7ffd1234))
long = b"x" * 300
record("strings-cut", 3, [string(96, b"abc"), string(100, long[:256]), -5, string(357, long[:17]), 2, 9],
       b"abc\0" + long[:256] + b"\0" + long[:17] + b"\0")
record("return-latency", 1, [0, 0, 0, 0, 0, 0], flags=RETURN | LATENCY, comm=b"sixteen-chars-xx")
frames = [0x7f0000098930 + 16, 0x7f00000f8340 + 8, 0x55550000 + 0x1234]
ids = b"".join(struct.pack("<i20sQ", 1, build_id, offset) for offset in (malloc + 16, 0xf8340 + 8)) \
    + struct.pack("<i20sQ", 0, bytes(20), 0)
stack = b"".join(struct.pack("<Q", f) for f in frames) + ids + struct.pack("<Q", len(frames) | 3 << 32)
record("stack", 1, [1, 2, 3, 4, 5, 6], stack, flags=STACK)
record("unknown-probe", 7, [1, 2])
EOF

# Memory maps: a real one (that of `head`), and hand-made lines for the rarer forms.
head -40 /proc/self/maps > "$corpus/ProcMaps/self"
cat > "$corpus/ProcMaps/forms" <<'EOF'
55d0c2a00000-55d0c2a21000 rw-p 00000000 00:00 0                          [heap]
7f3a1c000000-7f3a1c021000 r-xp 00002000 fd:01 1311297                    /tmp/app (deleted)
7f3a1c100000-7f3a1c121000 r--p 00000000 fd:01 1311298                    /opt/my app/lib with spaces.so
7f3a1c200000-7f3a1c201000 ---p 00000000 00:00 0 
7ffd3b5f1000-7ffd3b5f3000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7f3a1c300000-7f3a1c301000 r-xp 00000000 103:02 12 /memfd:jit (deleted)
not a maps line
EOF
