/* signals.c - signals arriving around and inside probed code.
 *
 *   signals [all]           the three below with their defaults, in this order
 *   signals sigqueue [K]    K (default 1000) x { probe_me(k); sigqueue(self, SIGRTMIN, k) }.
 *                           The handler checks si_code == SI_QUEUE and that the values
 *                           arrive as 0,1,2,... (no gap, duplicate or reordering).
 *                           Prints "sigqueue ok K" (else "sigqueue FAIL ..." and exit 1).
 *   signals itimer [N] [US] [TICKS]  a US-microsecond (default 10) ITIMER_REAL SIGALRM,
 *                           stopping after TICKS (default 1000) ticks, runs while
 *                           probe_me(i) is called N (default 10000) times; waits for at
 *                           least one tick. Prints "itimer ok" (tick counts vary, so they
 *                           are not printed).
 *   signals handler [M]     raise(SIGUSR1) M (default 100) times; the handler calls
 *                           probe_me. Prints "handler probe_me=M".
 *
 * Hits of probe_me: sigqueue 1000, itimer 10000, handler 100 (all inside the SIGUSR1
 * handler); "all" 11100. Default output:
 *   sigqueue ok 1000
 *   itimer ok
 *   handler probe_me=100
 *
 * A SIGALRM often arrives while a tracer is stepping over the breakpoint; the count
 * must stay exact (gdb 13 over-counts there: the handler returns to the breakpoint
 * address and gdb counts the entry again, 11461 hits for "itimer 10000 1000").
 * Under a ptrace tracer every SIGALRM is a signal-delivery stop and the timer re-arms
 * when the signal is dequeued, so an endless 10 us timer starves the main code on a
 * small VM (a stop costs ~100 us there; gdb 13 never finishes): the timer stops itself
 * after TICKS ticks.
 */
#include "../common.h"
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/time.h>
#include <time.h>

volatile long utap_sink;
static volatile long probe_calls;

PROBE long probe_me(long i)
{
    utap_sink = i;
    probe_calls++;
    return i;
}

static long arg_or(int argc, char **argv, int idx, long def)
{
    return argc > idx ? atol(argv[idx]) : def;
}

/* --- sigqueue ------------------------------------------------------------------ */

static volatile sig_atomic_t rt_received, rt_next, rt_bad, rt_want, rt_got, rt_bad_code, rt_code;

static void on_rt(int sig, siginfo_t *si, void *ctx)
{
    (void)sig, (void)ctx;
    int v = si->si_value.sival_int;
    if (si->si_code != SI_QUEUE && !rt_bad_code) {
        rt_bad_code = 1;
        rt_code = si->si_code;
    }
    if (v != rt_next && !rt_bad) {
        rt_bad = 1;
        rt_want = rt_next;
        rt_got = v;
    }
    rt_next = v + 1;
    rt_received++;
}

static int run_sigqueue(long k)
{
    struct sigaction sa = { .sa_sigaction = on_rt, .sa_flags = SA_SIGINFO | SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGRTMIN, &sa, NULL);
    for (long i = 0; i < k; i++) {
        probe_me(i);
        union sigval v = { .sival_int = (int)i };
        while (sigqueue(getpid(), SIGRTMIN, v) != 0) {
            if (errno != EAGAIN) {
                printf("sigqueue FAIL sigqueue errno=%d\n", errno);
                return 1;
            }
            sched_yield();   /* queue full: let pending ones be delivered */
        }
    }
    /* Normally each signal is delivered before sigqueue returns; wait in case not. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &block, &old);
    while (rt_received < k)
        sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
    signal(SIGRTMIN, SIG_DFL);

    if (rt_bad_code)
        printf("sigqueue FAIL si_code=%d\n", (int)rt_code);
    else if (rt_bad)
        printf("sigqueue FAIL expected=%d got=%d\n", (int)rt_want, (int)rt_got);
    else if (rt_received != k)
        printf("sigqueue FAIL received=%ld\n", (long)rt_received);
    else {
        printf("sigqueue ok %ld\n", k);
        return 0;
    }
    return 1;
}

/* --- itimer -------------------------------------------------------------------- */

static volatile long ticks;
static long max_ticks;

/*
 * The timer stops itself after max_ticks: under a ptrace tracer every tick is a stop of
 * ~100 us on a small VM, and ITIMER_REAL re-arms when its signal is dequeued, so a
 * 10 us timer would otherwise leave the program no time between ticks (gdb never
 * finishes). The bounded storm still lands ticks inside breakpoint handling.
 */
static void on_alarm(int sig)
{
    (void)sig;
    if (++ticks == max_ticks) {
        struct itimerval off = { { 0, 0 }, { 0, 0 } };
        setitimer(ITIMER_REAL, &off, NULL);
    }
}

static int run_itimer(long n, long usec, long most)
{
    max_ticks = most;
    struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = { { 0, usec }, { 0, usec } }, off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &it, NULL);
    for (long i = 0; i < n; i++)
        probe_me(i);
    /* A fast machine may finish before the first tick; the output must not depend on it. */
    for (int w = 0; w < 2000 && ticks == 0; w++) {
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
    setitimer(ITIMER_REAL, &off, NULL);
    signal(SIGALRM, SIG_DFL);
    if (ticks > 0) {
        printf("itimer ok\n");
        return 0;
    }
    printf("itimer FAIL no ticks\n");
    return 1;
}

/* --- handler ------------------------------------------------------------------- */

static volatile long usr1_seen;

static void on_usr1(int sig)
{
    (void)sig;
    probe_me(usr1_seen++);
}

static int run_handler(long m)
{
    struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    long before = probe_calls;
    for (long i = 0; i < m; i++)
        raise(SIGUSR1);
    signal(SIGUSR1, SIG_DFL);
    printf("handler probe_me=%ld\n", probe_calls - before);
    return probe_calls - before == m ? 0 : 1;
}

int main(int argc, char **argv)
{
    target_line_buffered();
    const char *cmd = argc > 1 ? argv[1] : "all";
    if (strcmp(cmd, "sigqueue") == 0)
        return run_sigqueue(arg_or(argc, argv, 2, 1000));
    if (strcmp(cmd, "itimer") == 0)
        return run_itimer(arg_or(argc, argv, 2, 10000), arg_or(argc, argv, 3, 10), arg_or(argc, argv, 4, 1000));
    if (strcmp(cmd, "handler") == 0)
        return run_handler(arg_or(argc, argv, 2, 100));
    if (strcmp(cmd, "all") == 0) {
        int bad = run_sigqueue(1000);
        bad |= run_itimer(10000, 10, 1000);
        bad |= run_handler(100);
        return bad;
    }
    fprintf(stderr, "usage: signals [all|sigqueue [K]|itimer [N] [US] [TICKS]|handler [M]]\n");
    return 2;
}
