/* returns.c - shapes of function return that trip up return probes.
 *
 *   returns [all]          the four below with their defaults, in this order
 *   returns fib [N]        long fib(int n), naive recursion, fib(N) (default 20)
 *                          -> "fib(20)=6765"; calls = returns = 2*fib(N+1)-1 (21891)
 *   returns tail [R]       tail_a(i) for i = 0..R-1 (default 10); tail_a ends in a tail
 *                          call (jmp, not call) into tail_b, so tail_b returns straight
 *                          to tail_a's caller. -> "tail sum=270"
 *   returns longjmp [R]    R (default 10) rounds of setjmp, then deep(1) -> deep(2) ...
 *                          -> deep(5), which longjmps back: no deep() call ever returns.
 *                          -> "longjmp rounds=10 depth=5"
 *   returns block          blocking_read(fd) sits in read() on a pipe until a helper
 *                          thread writes 'x' to it 400 ms later; returns the byte.
 *                          -> "blocking_read ret=120"
 *
 * Hits (entries/returns) with the defaults: fib 21891/21891; tail_a 10/10 and tail_b
 * 10/10 (but only 10 return instructions run in all: tail_b's); deep 50/0;
 * blocking_read 1/1, >= 400 ms from entry to return.
 */
#include "../common.h"
#include <pthread.h>
#include <setjmp.h>
#include <time.h>

volatile long utap_sink;

static long arg_or(int argc, char **argv, long def)
{
    return argc > 2 ? atol(argv[2]) : def;
}

PROBE long fib(int n)
{
    if (n < 2) {
        utap_sink = n;
        return n;
    }
    long a = fib(n - 1);
    long b = fib(n - 2);
    utap_sink = a;   /* after both calls: no accumulator transformation */
    return a + b;
}

PROBE long tail_b(long x)
{
    utap_sink = x;
    return 2 * x + 1;
}

/* gcc -O2 compiles the return into `jmp tail_b` (checked with objdump). */
PROBE long tail_a(long x)
{
    long y = (x & 1) ? 3 * x : x + 7;
    utap_sink = y;
    return tail_b(y);
}

#define DEPTH 5
static jmp_buf top;

PROBE int deep(int d)
{
    utap_sink = d;
    if (d <= 0)
        return 0;   /* never taken; without a returning path gcc flattens the recursion */
    if (d >= DEPTH)
        longjmp(top, d);
    int r = deep(d + 1);
    utap_sink = r;   /* after the call: a real recursive call, every level keeps its frame */
    return r + 1;
}

/* setjmp in a function of its own so no caller variable lives across it. */
__attribute__((noinline)) static int one_round(void)
{
    int v = setjmp(top);
    if (v == 0)
        deep(1);   /* does not return */
    return v;
}

static int pipefd[2];

static void *late_writer(void *arg)
{
    (void)arg;
    struct timespec t = { 0, 400 * 1000000L };
    while (nanosleep(&t, &t) != 0)
        ;
    if (write(pipefd[1], "x", 1) != 1)
        abort();
    return NULL;
}

PROBE long blocking_read(int fd)
{
    char c;
    ssize_t n = read(fd, &c, 1);
    utap_sink = n;
    return n == 1 ? c : -1;
}

static int run_fib(int n)
{
    printf("fib(%d)=%ld\n", n, fib(n));
    return 0;
}

static int run_tail(long r)
{
    long sum = 0;
    for (long i = 0; i < r; i++)
        sum += tail_a(i);
    printf("tail sum=%ld\n", sum);
    return 0;
}

static int run_longjmp(long r)
{
    long ok = 0;
    for (long i = 0; i < r; i++)
        ok += one_round() == DEPTH;
    printf("longjmp rounds=%ld depth=%d\n", ok, DEPTH);
    return ok != r;
}

static int run_block(void)
{
    pthread_t t;
    if (pipe(pipefd) != 0 || pthread_create(&t, NULL, late_writer, NULL) != 0) {
        fprintf(stderr, "returns: pipe/pthread_create failed\n");
        return 1;
    }
    long r = blocking_read(pipefd[0]);
    pthread_join(t, NULL);
    close(pipefd[0]);
    close(pipefd[1]);
    printf("blocking_read ret=%ld\n", r);
    return r != 'x';
}

int main(int argc, char **argv)
{
    target_line_buffered();
    const char *cmd = argc > 1 ? argv[1] : "all";
    if (strcmp(cmd, "fib") == 0)
        return run_fib((int)arg_or(argc, argv, 20));
    if (strcmp(cmd, "tail") == 0)
        return run_tail(arg_or(argc, argv, 10));
    if (strcmp(cmd, "longjmp") == 0)
        return run_longjmp(arg_or(argc, argv, 10));
    if (strcmp(cmd, "block") == 0)
        return run_block();
    if (strcmp(cmd, "all") == 0) {
        int bad = run_fib(20);
        bad |= run_tail(10);
        bad |= run_longjmp(10);
        bad |= run_block();
        return bad;
    }
    fprintf(stderr, "usage: returns [all|fib [N]|tail [R]|longjmp [R]|block]\n");
    return 2;
}
