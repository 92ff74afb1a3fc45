/* The few process primitives Swift cannot do safely itself: code between fork and exec. */
#define _GNU_SOURCE
#include "utap_sys.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

pid_t utap_spawn_gated(const char *path, char *const argv[], char *const envp[], int gate_fd,
                       int gate_write_fd)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0)
        return pid;

    /* Child: only async-signal-safe calls from here on. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    close(gate_write_fd);
    char go;
    ssize_t n;
    do {
        n = read(gate_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(127);
    close(gate_fd);
    execve(path, argv, envp);
    _exit(127);
}

static volatile int *stop_flag;
static volatile int *stop_signo;

static void on_stop(int signo)
{
    *stop_signo = signo;
    *stop_flag = 1;
}

void utap_install_stop_handlers(volatile int *flag, volatile int *signo)
{
    stop_flag = flag;
    stop_signo = signo;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}
