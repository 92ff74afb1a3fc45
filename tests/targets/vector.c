/*
 * vector [COUNT]: functions that open with vector (AVX, AVX-512) instructions, which
 * the kernel's x86 uprobes mishandle: it decodes them as the legacy one-byte opcode they
 * carry, refusing some, never firing on others and emulating others as jumps.
 *
 * Each is called COUNT times (default 100) and its result checked:
 *   v_regs(c)  VEX writes of vector registers from registers, then `mov`: an entry
 *              probe by name goes on the mov (both backends).
 *   v_load(p)  a VEX load first: no probe site before it, so the bpf backend refuses
 *              it and ptrace steps it out of line.
 *   c_vec(c)   endbr64, then VEX: the probe stays on endbr64 (+0).
 *   e_regs(c)  the same as v_regs with an EVEX write of %ymm16; called only where the
 *              CPU has AVX-512 BW and VL (0 calls elsewhere).
 *   memset     libc's, through a pointer: its AVX2 or AVX-512 implementation opens
 *              with a vector instruction on most machines.
 *   l_lock(p)  opens with a lock prefix, which the kernel refuses (silently when the
 *              file is mapped after the probe is attached, as a COMMAND's are).
 * Prints "v_regs=C v_load=C c_vec=C e_regs=E memset=C bad=B"; exits 1 when B > 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAKED __attribute__((naked, noinline, used))

/* The byte c broadcast to 32 lanes; returns lane 31. */
NAKED int v_regs(int c) {
    __asm__("vmovd %edi,%xmm0\n\t"
            "vpbroadcastb %xmm0,%ymm0\n\t"
            "mov %edi,%eax\n\t"
            "vextracti128 $1,%ymm0,%xmm1\n\t"
            "vpextrb $15,%xmm1,%eax\n\t"
            "vzeroupper\n\t"
            "ret");
}

/* The sign bits of 32 bytes at p. */
NAKED unsigned v_load(const char *p) {
    __asm__("vmovdqu (%rdi),%ymm0\n\t"
            "vpmovmskb %ymm0,%eax\n\t"
            "vzeroupper\n\t"
            "ret");
}

NAKED int c_vec(int c) {
    __asm__("endbr64\n\t"
            "vmovd %edi,%xmm0\n\t"
            "vpbroadcastb %xmm0,%ymm0\n\t"
            "vextracti128 $1,%ymm0,%xmm1\n\t"
            "vpextrb $15,%xmm1,%eax\n\t"
            "vzeroupper\n\t"
            "ret");
}

/* vpbroadcastb from a register is EVEX opcode 0x7a: the kernel took it for `jp`. */
NAKED int e_regs(int c) {
    __asm__("vpbroadcastb %edi,%ymm16\n\t"
            "mov %edi,%eax\n\t"
            "vextracti32x4 $1,%ymm16,%xmm17\n\t"
            "vpextrb $15,%xmm17,%eax\n\t"
            "ret");
}

/* Adds 1 to *p atomically. */
NAKED void l_lock(int *p) {
    __asm__("lock incl (%rdi)\n\t"
            "ret");
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 100;
    int evex = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    void *(*volatile set)(void *, int, size_t) = memset;
    char buf[256];
    int bad = 0, locked = 0;
    for (int i = 0; i < count; i++) {
        int c = 1 + i % 250;
        if (v_regs(c) != c) bad++;
        for (int j = 0; j < 32; j++) buf[j] = (j + i) % 3 == 0 ? (char)0x80 : 1;
        unsigned mask = 0;
        for (int j = 0; j < 32; j++) mask |= (unsigned)((j + i) % 3 == 0) << j;
        if (v_load(buf) != mask) bad++;
        if (c_vec(c) != c) bad++;
        if (evex && e_regs(c) != c) bad++;
        set(buf, c, 255);
        if (buf[0] != (char)c || buf[254] != (char)c) bad++;
        l_lock(&locked);
    }
    if (locked != count) bad++;
    printf("v_regs=%d v_load=%d c_vec=%d e_regs=%d memset=%d bad=%d\n", count, count, count, evex ? count : 0, count, bad);
    if (bad) fprintf(stderr, "vector: %d wrong results\n", bad);
    return bad ? 1 : 0;
}
