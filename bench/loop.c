// Benchmark target: calls bench_target() N times from THREADS threads and
// reports the wall time of the calling loop only (not start-up, not attach).
//
//   loop N THREADS        prints "elapsed_ns=<ns> calls=<N>"
//
// If LOOP_GO names a file, the loop prints "ready" and waits until that file
// exists before starting the clock, so a tracer (system-wide or by pid) can
// attach to a running process before the timed section.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile long sink;

// External, not inlined/cloned/IPA-analysed: every call really reaches the
// symbol the tracers probe. Built with clang -fcf-protection=full
// -fno-omit-frame-pointer, so it starts endbr64; push %rbp; mov %rsp,%rbp.
// (GCC 12 drops the frame in this leaf function even with
// -fno-omit-frame-pointer, which would leave a single-stepped lea at +4;
// run.sh checks the prologue bytes.)
#if defined(__clang__)
#define NOT_INLINED __attribute__((noinline))
#else
#define NOT_INLINED __attribute__((noinline, noclone, noipa))
#endif
NOT_INLINED long bench_target(long a, long b)
{
	return a * 3 + b;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long per_thread;
static pthread_barrier_t start_line;
static long long t_start[64], t_end[64];

static void *worker(void *arg)
{
	long id = (long)arg, acc = 0;

	pthread_barrier_wait(&start_line);
	// Each thread stamps its own start/end: main may be descheduled after
	// the barrier, so a clock read there could start after the work is done.
	t_start[id] = now_ns();
	// Arguments change every call so no call can be merged or hoisted.
	for (long i = 0; i < per_thread; i++)
		acc += bench_target(i, id);
	t_end[id] = now_ns();
	sink += acc;
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s N THREADS\n", argv[0]);
		return 2;
	}
	long n = atol(argv[1]), threads = atol(argv[2]);
	if (n <= 0 || threads <= 0 || threads > 64 || n % threads) {
		fprintf(stderr, "loop: N must be a positive multiple of THREADS (1..64)\n");
		return 2;
	}
	per_thread = n / threads;

	const char *go = getenv("LOOP_GO");
	if (go && *go) {
		printf("ready\n");
		fflush(stdout);
		// Poll instead of blocking on stdin: works the same from a shell
		// script, a pipeline or a detached process.
		struct timespec ms = { 0, 1000000 };
		while (access(go, F_OK) != 0)
			nanosleep(&ms, NULL);
	}

	pthread_t tid[64];
	// All workers leave the barrier together; elapsed is from the first
	// start to the last end.
	pthread_barrier_init(&start_line, NULL, threads);
	for (long t = 0; t < threads; t++) {
		int err = pthread_create(&tid[t], NULL, worker, (void *)t);
		if (err) {
			errno = err;
			perror("pthread_create");
			return 1;
		}
	}
	long long t0 = 0, t1 = 0;
	for (long t = 0; t < threads; t++) {
		pthread_join(tid[t], NULL);
		if (t == 0 || t_start[t] < t0)
			t0 = t_start[t];
		if (t_end[t] > t1)
			t1 = t_end[t];
	}

	printf("elapsed_ns=%lld calls=%ld\n", t1 - t0, n);
	return 0;
}
