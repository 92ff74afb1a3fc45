/* forever.c - calls tick(i) every 1 ms until killed. */
#include "common.h"
#include <errno.h>
#include <time.h>

volatile long utap_sink;

PROBE void tick(long i)
{
    utap_sink = i;
}

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 10, &o);   /* COUNT is accepted but ignored */

    printf("ready %ld\n", (long)getpid());
    fflush(stdout);
    if (o.wait) {
        char line[256];
        if (fgets(line, sizeof line, stdin) == NULL) {
            /* EOF: proceed */
        }
    }

    const struct timespec ms = { 0, 1000000L };
    for (long i = 0;; i++) {
        tick(i);
        nanosleep(&ms, NULL);
    }
}
