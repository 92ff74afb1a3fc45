/* loop.c - one hot probed function, for hit throughput and thread handling.
 *
 *   loop [N] [--wait]          main calls probe_me(i), i = 0..N-1 (default N = 1000000)
 *                              prints "calls=N sum=N*(N-1)/2"
 *   loop [N] --threads T       T threads each call probe_me(i), i = 0..N-1; main does not
 *                              prints "threads=T calls=T*N sum=T*N*(N-1)/2"
 *   loop --cycles C            C rounds of pthread_create + join; each thread calls
 *                              probe_me(round) once; prints "cycles=C calls=C sum=C*(C-1)/2"
 * --wait: print "ready <pid>", block for a line of stdin, then start (for attaching).
 *
 * Hits with no arguments: probe_me 1000000 (sum=499999500000).
 * Built with -fcf-protection=full: probe_me starts with endbr64 (f3 0f 1e fa), so the
 * breakpoint lands on that instruction.
 */
#include "../common.h"
#include <pthread.h>

volatile long utap_sink;

PROBE long probe_me(long i)
{
    utap_sink = i;
    return i;
}

static long n = 1000000;

static void *worker(void *arg)
{
    long sum = 0;
    (void)arg;
    for (long i = 0; i < n; i++)
        sum += probe_me(i);
    return (void *)sum;
}

static void *once(void *arg)
{
    return (void *)probe_me((long)arg);
}

static void die(const char *what)
{
    fprintf(stderr, "loop: %s failed\n", what);
    exit(1);
}

int main(int argc, char **argv)
{
    long threads = 0, cycles = -1;
    int wait = 0;
    target_line_buffered();
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--threads") == 0 && a + 1 < argc)
            threads = atol(argv[++a]);
        else if (strcmp(argv[a], "--cycles") == 0 && a + 1 < argc)
            cycles = atol(argv[++a]);
        else if (strcmp(argv[a], "--wait") == 0)
            wait = 1;
        else
            n = atol(argv[a]);
    }
    target_ready_wait(wait);

    long sum = 0;
    if (cycles >= 0) {
        for (long c = 0; c < cycles; c++) {
            pthread_t t;
            void *r;
            if (pthread_create(&t, NULL, once, (void *)c) || pthread_join(t, &r))
                die("pthread_create/join");
            sum += (long)r;
        }
        printf("cycles=%ld calls=%ld sum=%ld\n", cycles, cycles, sum);
    } else if (threads > 0) {
        pthread_t *t = calloc(threads, sizeof *t);
        if (!t)
            die("calloc");
        for (long k = 0; k < threads; k++)
            if (pthread_create(&t[k], NULL, worker, NULL))
                die("pthread_create");
        for (long k = 0; k < threads; k++) {
            void *r;
            if (pthread_join(t[k], &r))
                die("pthread_join");
            sum += (long)r;
        }
        free(t);
        printf("threads=%ld calls=%ld sum=%ld\n", threads, threads * n, sum);
    } else {
        sum = (long)worker(NULL);
        printf("calls=%ld sum=%ld\n", n, sum);
    }
    return 0;
}
