/* sleeper.c - nap(20) COUNT times (default 3), for latency tests. */
#include "common.h"
#include <errno.h>
#include <time.h>

volatile long utap_sink;

PROBE void nap(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    utap_sink = ms;
}

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 3, &o);

    target_ready_wait(o.wait);

    long n = 0;
    for (long i = 0; i < o.count; i++) {
        nap(20);
        n++;
    }
    printf("naps=%ld\n", n);
    fflush(stdout);
    return 0;
}
