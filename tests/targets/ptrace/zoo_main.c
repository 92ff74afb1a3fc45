/* zoo_main.c - drives zoo.S: calls every zoo_* function N times (argv[1], default 10)
 * and prints one line per instruction class, "<class> ok=<good>/<N>" (the two fault lines
 * differ, see below). Exit 0 when every check passed.
 *
 * Hits a tracer must see with the default N = 10:
 *   zoo_jz          20 (10 with ZF set: jz taken; 10 with ZF clear: not taken)
 *   zoo_avx_load    10 if the CPU has AVX, else 0 (the output line is the same)
 *   zoo_rep_movsb   10 (its rep movsb runs 64 iterations in place: a tracer that
 *                   single-steps it and reports a hit each time rip is back on the
 *                   breakpoint sees 640; gdb 13 does)
 *   every other zoo_* function: 10 each (zoo_nop zoo_nop5 zoo_push_rbx zoo_push_r12
 *   zoo_mov_rbp zoo_sub_imm8 zoo_sub_imm32 zoo_jmp8 zoo_jmp32 zoo_call zoo_ret
 *   zoo_rip_load zoo_rip_store zoo_rip_store_imm zoo_rip_lea zoo_sse_load
 *   zoo_pushf zoo_call_reg zoo_jmp_reg zoo_idiv zoo_null_load zoo_syscall zoo_lock).
 * zoo_syscall and zoo_lock are the instructions a ptrace tracer must refuse to probe
 * (so it sees 0 there; 10 is what runs, e.g. for uprobes).
 * zoo_idiv and zoo_null_load never return: each call faults on its first
 * instruction and the handler siglongjmps out ("fault_fpe"/"fault_segv" lines:
 * rip_ok=1 when the saved rip was the function's address every time; addr_ok=1 when
 * si_addr was the function's address (SIGFPE) or NULL (SIGSEGV) every time).
 */
#include "../common.h"
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <ucontext.h>

volatile long utap_sink;

typedef long (*sp_fn)(long x, long entry_rsp);
long helper_sp_call(sp_fn fn, long x);
long helper_jz_call(long x, long a, long b);
long helper_getpid(void);
long helper_icall_target(void);
long helper_ijmp_target(void);

long zoo_nop(long x);
long zoo_nop5(long x);
long zoo_push_rbx(long x, long entry_rsp);
long zoo_push_r12(long x, long entry_rsp);
long zoo_mov_rbp(long x, long entry_rsp);
long zoo_sub_imm8(long x, long entry_rsp);
long zoo_sub_imm32(long x, long entry_rsp);
long zoo_jmp8(long x);
long zoo_jmp32(long x);
long zoo_call(long x, long entry_rsp);
long zoo_ret(long x, long entry_rsp);   /* really void: only ever called for its ret */
int zoo_rip_load(void);
void zoo_rip_store(int v);
int zoo_rip_store_imm(void);
int *zoo_rip_lea(void);
double zoo_sse_load(long x);
double zoo_avx_load(long x);
char *zoo_rep_movsb(char *dst, const char *src, long unused, size_t n);
long zoo_pushf(long x, long entry_rsp);
long zoo_call_reg(long (*target)(void), long x);
long zoo_jmp_reg(long (*target)(void), long x);
int zoo_idiv(int unused, int divisor);
int zoo_null_load(const int *p);
int zoo_lock(void);

extern int zoodata_counter, zoodata_lock, zoodata_scratch[3];

static long n;
static int failures;

static void report(const char *cls, long good)
{
    printf("%s ok=%ld/%ld\n", cls, good, n);
    if (good != n)
        failures++;
}

/* Runs EXPR for i = 0..n-1 and reports how many times it held. */
#define CHECK(cls, expr)                 \
    do {                                 \
        long good_ = 0;                  \
        for (long i = 0; i < n; i++)     \
            good_ += (expr) ? 1 : 0;     \
        report(cls, good_);              \
    } while (0)

static sigjmp_buf fault_env;
static volatile sig_atomic_t expecting;
static void *volatile fault_addr, *volatile fault_rip;

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    if (!expecting) {
        /* A fault we did not arrange: die of it instead of hiding it. */
        signal(sig, SIG_DFL);
        return;
    }
    expecting = 0;
    fault_addr = si->si_addr;
    fault_rip = (void *)((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RIP];
    siglongjmp(fault_env, 1);
}

/* 1 if CALL faulted (the handler jumped back here), 0 if it returned. A function of
 * its own so no local of the caller lives across sigsetjmp. */
__attribute__((noinline)) static int faulted(void (*call)(void))
{
    if (sigsetjmp(fault_env, 1))
        return 1;
    expecting = 1;
    call();
    expecting = 0;
    return 0;
}

/* Calls CALL n times, each expected to fault at FN with si_addr == WANT_ADDR. */
static void fault_case(const char *cls, void (*call)(void), void *fn, void *want_addr)
{
    long faults = 0, rip_ok = 0, addr_ok = 0;
    for (long i = 0; i < n; i++) {
        if (!faulted(call))
            continue;
        faults++;
        rip_ok += fault_rip == fn;
        addr_ok += fault_addr == want_addr;
    }
    printf("%s faults=%ld rip_ok=%d addr_ok=%d\n", cls, faults, rip_ok == n, addr_ok == n);
    if (faults != n || rip_ok != n || addr_ok != n)
        failures++;
}

static volatile int zero;   /* keeps the compiler from seeing the constant 0 */
static void call_idiv(void) { utap_sink = zoo_idiv(7, zero); }
static void call_null_load(void) { utap_sink = zoo_null_load((const int *)(intptr_t)zero); }

static int copy_ok(long i)
{
    char src[64], dst[64 + 1];
    for (int k = 0; k < 64; k++)
        src[k] = (char)(i + k);
    memset(dst, 0, sizeof dst);
    char *end = zoo_rep_movsb(dst, src, 0, 64);
    return end == dst + 64 && memcmp(dst, src, 64) == 0 && dst[64] == 0;
}

static int store_imm_ok(void)
{
    memset(zoodata_scratch, 0, sizeof zoodata_scratch);
    int r = zoo_rip_store_imm();
    return r == 0x5a5a5a5a && zoodata_scratch[0] == 0 &&
           zoodata_scratch[1] == 0x5a5a5a5a && zoodata_scratch[2] == 0;
}

int main(int argc, char **argv)
{
    target_line_buffered();
    n = argc > 1 ? atol(argv[1]) : 10;

    struct sigaction sa = { .sa_sigaction = on_fault, .sa_flags = SA_SIGINFO };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);

    CHECK("nop", zoo_nop(i) == i + 1);
    CHECK("nop5", zoo_nop5(i) == i + 5);
    CHECK("push_rbx", helper_sp_call(zoo_push_rbx, i) == i);
    CHECK("push_r12", helper_sp_call(zoo_push_r12, i) == i);
    CHECK("mov_rbp", helper_sp_call(zoo_mov_rbp, i) == i);
    CHECK("sub_imm8", helper_sp_call(zoo_sub_imm8, i) == i);
    CHECK("sub_imm32", helper_sp_call(zoo_sub_imm32, i) == i);
    CHECK("jmp8", zoo_jmp8(i) == i + 8);
    CHECK("jmp32", zoo_jmp32(i) == i + 32);
    CHECK("jz_taken", helper_jz_call(i, 5, 5) == i + 200);
    CHECK("jz_not_taken", helper_jz_call(i, 5, 6) == i + 100);
    CHECK("call", helper_sp_call(zoo_call, i) == i + 3);
    CHECK("ret", (helper_sp_call(zoo_ret, i), 1));
    CHECK("rip_load", (zoodata_counter = 1000 + (int)i, zoo_rip_load() == 1000 + i));
    CHECK("rip_store", (zoo_rip_store(2000 + (int)i), zoodata_counter == 2000 + i));
    CHECK("rip_store_imm", store_imm_ok());
    CHECK("rip_lea", zoo_rip_lea() == &zoodata_counter);
    CHECK("sse_load", zoo_sse_load(i) == 2.5 + i);
    if (__builtin_cpu_supports("avx"))
        CHECK("avx_load", zoo_avx_load(i) == 0.25 + i);
    else
        report("avx_load", n);   /* same line without AVX: the output must not vary */
    CHECK("rep_movsb", copy_ok(i));
    CHECK("pushf", helper_sp_call(zoo_pushf, i) == 0);
    CHECK("call_reg", zoo_call_reg(helper_icall_target, i) == i + 7);
    CHECK("jmp_reg", zoo_jmp_reg(helper_ijmp_target, i) == i + 9);
    fault_case("fault_fpe", call_idiv, (void *)zoo_idiv, (void *)zoo_idiv);
    fault_case("fault_segv", call_null_load, (void *)zoo_null_load, NULL);
    CHECK("syscall", helper_getpid() == getpid());
    zoodata_lock = 0;
    CHECK("lock", zoo_lock() == i + 1);

    if (failures)
        fprintf(stderr, "zoo: %d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
