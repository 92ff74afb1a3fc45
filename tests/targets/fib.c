/* fib.c - naive recursive fib; fib(n) makes 2*fib(n+1)-1 calls (177 for n=10). */
#include "common.h"

volatile long utap_sink;

PROBE long fib(int n)
{
    if (n < 2) {
        utap_sink = n;
        return n;
    }
    long a = fib(n - 1);
    long b = fib(n - 2);
    /* volatile store after both calls: no tail-recursion/accumulator
     * transformation, so every recursive call stays a real call. */
    utap_sink = a;
    return a + b;
}

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 10, &o);

    target_ready_wait(o.wait);

    int n = (int)o.count;
    long r = fib(n);
    printf("fib(%d)=%ld\n", n, r);
    fflush(stdout);
    return 0;
}
