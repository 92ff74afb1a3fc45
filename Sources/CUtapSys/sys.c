/* What Swift cannot do (safely) itself: code between fork and exec, signal handlers, and a
 * bpf() command newer than the libbpf this builds with. */
#define _GNU_SOURCE
#include "utap_sys.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/ptrace.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include <linux/bpf.h>

/* A system call made directly, not through libc: once the gate opens, the probes are
 * attached, and the child must run no libc function before the command's first
 * instruction, or a probe on libc's read, close or execve would report utap's launcher
 * (comm "utap") as the traced program. */
static long raw_syscall3(long number, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(number), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

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
    long n;
    do {
        n = raw_syscall3(SYS_read, gate_fd, (long)&go, 1);
    } while (n == -EINTR);
    if (n != 1)
        raw_syscall3(SYS_exit_group, 127, 0, 0);
    raw_syscall3(SYS_close, gate_fd, 0, 0);
    raw_syscall3(SYS_execve, (long)path, (long)argv, (long)envp);
    raw_syscall3(SYS_exit_group, 127, 0, 0);
    __builtin_unreachable();
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

static void on_wake(int signo)
{
    (void)signo;
}

void utap_install_wake_handler(int signo)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_wake;
    sigemptyset(&sa.sa_mask);
    sigaction(signo, &sa, NULL);
}

/* The link_create part of union bpf_attr, as laid out for uprobe_multi. */
struct uprobe_multi_attr {
    __u32 prog_fd;
    __u32 target_fd;
    __u32 attach_type;
    __u32 flags;
    __u64 path;
    __u64 offsets;
    __u64 ref_ctr_offsets;
    __u64 cookies;
    __u32 cnt;
    __u32 multi_flags;
    __u32 pid;
    __u32 unused;
};

int utap_uprobe_multi_link(int prog_fd, const char *path, const unsigned long *offsets,
                           const unsigned long *ref_ctr_offsets, const unsigned long long *cookies,
                           unsigned int cnt, int retprobe, int pid)
{
    struct uprobe_multi_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_fd = prog_fd;
    attr.attach_type = UTAP_BPF_TRACE_UPROBE_MULTI;
    attr.path = (__u64)(unsigned long)path;
    attr.offsets = (__u64)(unsigned long)offsets;
    attr.ref_ctr_offsets = (__u64)(unsigned long)ref_ctr_offsets;
    attr.cookies = (__u64)(unsigned long)cookies;
    attr.cnt = cnt;
    attr.multi_flags = retprobe ? 1 /* BPF_F_UPROBE_MULTI_RETURN */ : 0;
    attr.pid = pid > 0 ? (__u32)pid : 0;
    long fd = syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(attr));
    return fd < 0 ? -errno : (int)fd;
}

long utap_ptrace(int request, pid_t pid, void *addr, void *data)
{
    errno = 0;
    return ptrace((enum __ptrace_request)request, pid, addr, data);
}

int utap_keep_only_capabilities(unsigned long long keep)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &header, data) != 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        unsigned int mask = (unsigned int)(keep >> (32 * i));
        data[i].effective &= mask;
        data[i].permitted &= mask;
        data[i].inheritable = 0;
    }
    if (syscall(SYS_capset, &header, data) != 0)
        return -errno;
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    return 0;
}
