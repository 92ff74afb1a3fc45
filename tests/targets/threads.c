/* threads.c - 4 worker threads, each calls work() COUNT times. */
#include "common.h"
#include <pthread.h>
#include <sys/types.h>

#define NTHREADS 4

volatile long utap_sink;

PROBE long work(int thread_index, long i)
{
    utap_sink = i;
    return (long)thread_index * 1000000L + i;
}

static long count;
static pthread_barrier_t created;   /* all threads have recorded their tid */
static pthread_barrier_t go;        /* main releases the workers */
static pid_t tids[NTHREADS];
static long good[NTHREADS];

static void *worker(void *arg)
{
    int idx = (int)(long)arg;
    tids[idx] = gettid();
    pthread_barrier_wait(&created);
    pthread_barrier_wait(&go);
    long ok = 0;
    for (long i = 0; i < count; i++)
        if (work(idx, i) == (long)idx * 1000000L + i)
            ok++;
    good[idx] = ok;
    return NULL;
}

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 10, &o);
    count = o.count;

    pthread_barrier_init(&created, NULL, NTHREADS + 1);
    pthread_barrier_init(&go, NULL, NTHREADS + 1);

    pthread_t th[NTHREADS];
    for (long t = 0; t < NTHREADS; t++) {
        if (pthread_create(&th[t], NULL, worker, (void *)t) != 0) {
            fprintf(stderr, "threads: pthread_create failed\n");
            return 1;
        }
    }
    pthread_barrier_wait(&created);      /* all 4 threads exist, tids recorded */

    target_ready_wait(o.wait);

    pthread_barrier_wait(&go);
    long total = 0;
    for (int t = 0; t < NTHREADS; t++) {
        pthread_join(th[t], NULL);
        total += good[t];
    }
    printf("total=%ld\n", total);
    fflush(stdout);
    return total == NTHREADS * count ? 0 : 1;
}
