// Benchmark target: calls bench_target() N times from THREADS threads and
// reports the wall time of the calling loop only (not start-up, not attach).
//
//   loop N THREADS [MODE]  prints "elapsed_ns=<ns> calls=<N>"
//
// MODE picks the function the loop calls (default "target"):
//   target  bench_target(i, thread): endbr64; push %rbp; mov %rsp,%rbp (clang)
//   step    bench_step(i, thread): endbr64; lea (%rdi,%rdi,2),%rax (written in
//           assembly), so a probe after endbr64 sits on an instruction a ptrace
//           tracer must single-step, not emulate
//   libc    labs(i - N/2) from libc, through the PLT (for ltrace -e labs)
//
// If LOOP_GO names a file, the loop prints "ready" and waits until that file
// exists before starting the clock, so a tracer (system-wide or by pid) can
// attach to a running process before the timed section.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

// Same result as bench_target, but the instruction after endbr64 is a lea:
// no ptrace tracer emulates it, so a probe there is single-stepped out of
// line. Assembly, so no compiler or flag can change those bytes (run.sh checks
// them anyway).
long bench_step(long a, long b);
__asm__(
	"	.text\n"
	"	.globl	bench_step\n"
	"	.type	bench_step, @function\n"
	"	.p2align 4\n"
	"bench_step:\n"
	"	endbr64\n"
	"	lea	(%rdi,%rdi,2), %rax\n"
	"	add	%rsi, %rax\n"
	"	ret\n"
	"	.size	bench_step, .-bench_step\n");

// labs must stay a real call into libc (through labs@plt) for ltrace -e
// labs: compilers otherwise expand it inline. clang: no_builtin on the caller;
// GCC: a declaration under another name (clang sees through that one).
#if defined(__clang__)
#define LIBC_CALLS __attribute__((no_builtin("labs")))
#define libc_labs labs
#else
#define LIBC_CALLS
extern long libc_labs(long) __asm__("labs");
#endif

enum mode { MODE_TARGET, MODE_STEP, MODE_LIBC };

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long per_thread;
static enum mode mode;
static pthread_barrier_t start_line;
static long long t_start[64], t_end[64];

LIBC_CALLS static void *worker(void *arg)
{
	long id = (long)arg, acc = 0;

	pthread_barrier_wait(&start_line);
	// Each thread stamps its own start/end: main may be descheduled after
	// the barrier, so a clock read there could start after the work is done.
	t_start[id] = now_ns();
	// Arguments change every call so no call can be merged or hoisted.
	if (mode == MODE_STEP) {
		for (long i = 0; i < per_thread; i++)
			acc += bench_step(i, id);
	} else if (mode == MODE_LIBC) {
		for (long i = 0; i < per_thread; i++)
			acc += libc_labs(i - per_thread / 2);
	} else {
		for (long i = 0; i < per_thread; i++)
			acc += bench_target(i, id);
	}
	t_end[id] = now_ns();
	sink += acc;
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s N THREADS [target|step|libc]\n", argv[0]);
		return 2;
	}
	const char *m = argc == 4 ? argv[3] : "target";
	if (!strcmp(m, "target"))
		mode = MODE_TARGET;
	else if (!strcmp(m, "step"))
		mode = MODE_STEP;
	else if (!strcmp(m, "libc"))
		mode = MODE_LIBC;
	else {
		fprintf(stderr, "loop: MODE must be target, step or libc\n");
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
