/* coroutines.c - ucontext coroutines under return probes: one thread, several stacks.
 *
 *   coroutines [R] [finish|abandon|migrate]
 *
 * Three coroutines, each on its own malloc'd stack (all three in the one [heap]
 * mapping), pass control round a ring R times (default 10): coroutine i runs
 * descend(i, 3), four nested calls deep, and at the bottom switch_to(i, i + 1) (the
 * last one to main). So calls are pending on four stacks at once, and each coroutine
 * resumes in the middle of its calls. switch_to ends in a tail call of swapcontext
 * (gcc -O2 emits `jmp swapcontext`): the context saved holds switch_to's own return
 * address, which a return probe has replaced.
 *
 *   finish   (default) one more pass lets every coroutine return from its last
 *            switch_to and end (uc_link: the next one, the last one main).
 *            Every call returns: switch_to 3R / 3R, descend 12R / 12R.
 *   abandon  main stops after R passes: each coroutine's last calls never return.
 *            switch_to 3R / 3(R-1), descend 12R / 12(R-1).
 *   migrate  main makes the first pass; a second thread makes the rest, finish
 *            included, while main waits for it: calls made by one thread return on
 *            another. Counts as finish.
 *
 * Output: "coroutines rounds=R switches=S descents=D" with S = 3R and D = 12R.
 */
#include "../common.h"
#include <pthread.h>
#include <ucontext.h>

#define COROUTINES 3
#define DEPTH 3
#define STACK_SIZE (64 * 1024)   /* below malloc's mmap threshold: on the heap */

volatile long utap_sink;

static ucontext_t main_context, contexts[COROUTINES];
static long rounds, switches, descents;

/* The tail call is the point: swapcontext saves the hijacked return address. */
PROBE void switch_to(int from, int to)
{
    switches++;
    swapcontext(&contexts[from], to < COROUTINES ? &contexts[to] : &main_context);
}

PROBE long descend(int id, int depth)
{
    descents++;
    if (depth == 0) {
        switch_to(id, id + 1);
        utap_sink = id;
        return id;
    }
    long r = descend(id, depth - 1);
    utap_sink = r;   /* after the call: every level keeps its frame */
    return r + 1;
}

static void run_coroutine(int id)
{
    for (long i = 0; i < rounds; i++)
        if (descend(id, DEPTH) != id + DEPTH)
            abort();
}

/* One pass round the ring, from the calling thread. */
static void pass(void)
{
    if (swapcontext(&main_context, &contexts[0]) != 0)
        abort();
}

static void *later_passes(void *arg)
{
    (void)arg;
    for (long i = 1; i <= rounds; i++)
        pass();
    return NULL;
}

int main(int argc, char **argv)
{
    target_line_buffered();
    rounds = argc > 1 ? atol(argv[1]) : 10;
    const char *mode = argc > 2 ? argv[2] : "finish";
    if (rounds < 1 || (strcmp(mode, "finish") != 0 && strcmp(mode, "abandon") != 0 && strcmp(mode, "migrate") != 0)) {
        fprintf(stderr, "usage: coroutines [R>=1] [finish|abandon|migrate]\n");
        return 2;
    }
    for (int i = 0; i < COROUTINES; i++) {
        getcontext(&contexts[i]);
        contexts[i].uc_stack.ss_sp = malloc(STACK_SIZE);
        contexts[i].uc_stack.ss_size = STACK_SIZE;
        contexts[i].uc_link = i + 1 < COROUTINES ? &contexts[i + 1] : &main_context;
        makecontext(&contexts[i], (void (*)(void))run_coroutine, 1, i);
    }
    if (strcmp(mode, "migrate") == 0) {
        pass();
        pthread_t thread;
        if (pthread_create(&thread, NULL, later_passes, NULL) != 0 || pthread_join(thread, NULL) != 0)
            abort();
    } else {
        long passes = strcmp(mode, "finish") == 0 ? rounds + 1 : rounds;
        for (long i = 0; i < passes; i++)
            pass();
    }
    printf("coroutines rounds=%ld switches=%ld descents=%ld\n", rounds, switches, descents);
    return switches != COROUTINES * rounds || descents != COROUTINES * (DEPTH + 1) * rounds;
}
