/* forkexec.c - probed code across fork, vfork, posix_spawn and exec.
 *
 *   forkexec [all]       fork, vfork, spawn, then reexec (last: it replaces the process)
 *   forkexec fork        in_fork() calls fork() and returns its result in both processes;
 *                        child and parent each call probe_me 3 times; the child exits 0
 *                        and the parent prints after waiting for it
 *   forkexec vfork       the vfork child calls probe_me once, then _exit(0)
 *   forkexec spawn       posix_spawn of this executable with "child", which calls
 *                        probe_me 2 times
 *   forkexec reexec      probe_me once, then execv of this executable with
 *                        "reexec-done", which calls probe_me 5 times
 *   forkexec thread-exec a second (non-leader) thread calls probe_me once, then execs
 *                        this executable with "reexec-done"
 * The executable path comes from /proc/self/exe (so comm stays "forkexec").
 *
 * Hits (P = the process the command started in, same pid across exec):
 *   fork        in_fork 1 entry, 2 returns (P: child pid; child: 0);
 *               probe_me 6 (3 in P, 3 in the child)
 *   vfork       probe_me 1, in the vfork child (it shares P's memory, breakpoints too)
 *   spawn       probe_me 2, in the spawned child (a fresh image)
 *   reexec      probe_me 6 in P: 1 before the exec, 5 after it
 *   thread-exec probe_me 6 in P: 1 in the non-leader thread before its exec, 5 after;
 *               prints "thread-exec probe_me=1" then "reexec-done probe_me=5"
 *   all         in_fork 1 entry/2 returns; probe_me 15 (P 3+1+5, fork child 3,
 *               vfork child 1, spawned child 2)
 * Output of "all" (the parent prints only after its child has exited, so the order is
 * fixed):
 *   fork child probe_me=3
 *   fork parent probe_me=3 child_exit=0
 *   vfork probe_me=1 child_exit=0
 *   spawn child probe_me=2
 *   spawn child_exit=0
 *   reexec probe_me=1
 *   reexec-done probe_me=5
 */
#include "../common.h"
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/wait.h>

volatile long utap_sink;
static volatile long probe_calls;
extern char **environ;

PROBE long probe_me(long i)
{
    utap_sink = i;
    probe_calls++;
    return i;
}

/* Returns twice: a return probe placed here sees the return in the child too. */
PROBE pid_t in_fork(void)
{
    pid_t p = fork();
    utap_sink = p;   /* keeps fork() from being a tail call */
    return p;
}

static char self[PATH_MAX];
static const char *argv0;

static void die(const char *what)
{
    fprintf(stderr, "forkexec: %s failed\n", what);
    exit(1);
}

static void calls(long k)
{
    for (long i = 0; i < k; i++)
        probe_me(i);
}

/* Exit status of PID (-1 if it did not exit normally). */
static int reap(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) != pid)
        die("waitpid");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run_fork(void)
{
    fflush(stdout);   /* the child must not inherit buffered output */
    long before = probe_calls;
    pid_t pid = in_fork();
    if (pid < 0)
        die("fork");
    calls(3);
    if (pid == 0) {
        printf("fork child probe_me=%ld\n", probe_calls - before);
        exit(0);
    }
    int st = reap(pid);
    printf("fork parent probe_me=%ld child_exit=%d\n", probe_calls - before, st);
    return st != 0;
}

static int run_vfork(void)
{
    fflush(stdout);
    long before = probe_calls;
    pid_t pid = vfork();
    if (pid == 0) {
        probe_me(0);   /* the child runs in our memory: probe_calls counts it */
        _exit(0);
    }
    if (pid < 0)
        die("vfork");
    int st = reap(pid);
    printf("vfork probe_me=%ld child_exit=%d\n", probe_calls - before, st);
    return st != 0;
}

static int run_spawn(void)
{
    char *args[] = { (char *)argv0, "child", NULL };
    pid_t pid;
    fflush(stdout);
    if (posix_spawn(&pid, self, NULL, NULL, args, environ) != 0)
        die("posix_spawn");
    int st = reap(pid);
    printf("spawn child_exit=%d\n", st);
    return st != 0;
}

static void reexec(void)
{
    char *args[] = { (char *)argv0, "reexec-done", NULL };
    fflush(stdout);
    execv(self, args);
    die("execv");
}

static void *exec_thread(void *arg)
{
    (void)arg;
    probe_me(0);
    printf("thread-exec probe_me=1\n");
    reexec();
    return NULL;
}

int main(int argc, char **argv)
{
    target_line_buffered();
    argv0 = argv[0];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        die("readlink /proc/self/exe");
    self[len] = '\0';

    const char *cmd = argc > 1 ? argv[1] : "all";
    if (strcmp(cmd, "child") == 0) {
        calls(2);
        printf("spawn child probe_me=%ld\n", probe_calls);
        return 0;
    }
    if (strcmp(cmd, "reexec-done") == 0) {
        calls(5);
        printf("reexec-done probe_me=%ld\n", probe_calls);
        return 0;
    }
    if (strcmp(cmd, "fork") == 0)
        return run_fork();
    if (strcmp(cmd, "vfork") == 0)
        return run_vfork();
    if (strcmp(cmd, "spawn") == 0)
        return run_spawn();
    if (strcmp(cmd, "all") == 0) {
        if (run_fork() || run_vfork() || run_spawn())
            return 1;
        cmd = "reexec";
    }
    if (strcmp(cmd, "reexec") == 0) {
        probe_me(0);
        printf("reexec probe_me=1\n");
        reexec();
    }
    if (strcmp(cmd, "thread-exec") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, exec_thread, NULL))
            die("pthread_create");
        pthread_join(t, NULL);   /* never returns: the exec ends this thread */
        die("thread exec");
    }
    fprintf(stderr, "usage: forkexec [all|fork|vfork|spawn|reexec|thread-exec]\n");
    return 2;
}
