/* migrate.c - 2 threads, each calls hop(thread, i) COUNT times and moves itself to
 * the next allowed CPU every 50 calls, so its calls run on every CPU in turn. With
 * per-CPU ring buffers a thread's records land in several rings; the reader must
 * still hand them over in the order the thread made them.
 * Prints "total=N cpus=M": M is the fewest CPUs any thread ran its calls on. */
#include "common.h"
#include <pthread.h>
#include <sched.h>

#define NTHREADS 2
#define HOP_EVERY 50

volatile long utap_sink;

PROBE long hop(int thread_index, long i)
{
    utap_sink = thread_index;
    return i + 1;
}

static long count;
static cpu_set_t allowed;

static void *worker(void *arg)
{
    int idx = (int)(long)arg;
    long done = 0;
    int cpu = -1;
    cpu_set_t seen;
    CPU_ZERO(&seen);
    for (long i = 0; i < count; i++) {
        if (i % HOP_EVERY == 0) {
            /* the next allowed CPU after the current one, wrapping around */
            do
                cpu = (cpu + 1) % CPU_SETSIZE;
            while (!CPU_ISSET(cpu, &allowed));
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            sched_setaffinity(0, sizeof(one), &one);
        }
        int now = sched_getcpu();
        if (now >= 0)
            CPU_SET(now, &seen);
        done += hop(idx, i) - i;
    }
    return (void *)(long)(done * 1000 + CPU_COUNT(&seen));
}

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 1000, &o);
    count = o.count;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
        perror("migrate: sched_getaffinity");
        return 1;
    }
    target_ready_wait(o.wait);

    pthread_t th[NTHREADS];
    for (long t = 0; t < NTHREADS; t++) {
        if (pthread_create(&th[t], NULL, worker, (void *)t) != 0) {
            fprintf(stderr, "migrate: pthread_create failed\n");
            return 1;
        }
    }
    long total = 0, fewest = CPU_SETSIZE;
    for (int t = 0; t < NTHREADS; t++) {
        void *r;
        pthread_join(th[t], &r);
        total += (long)r / 1000;
        if ((long)r % 1000 < fewest)
            fewest = (long)r % 1000;
    }
    printf("total=%ld cpus=%ld\n", total, fewest);
    return 0;
}
