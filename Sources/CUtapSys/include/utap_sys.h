#ifndef UTAP_SYS_H
#define UTAP_SYS_H
#include <sys/epoll.h>
#include <sys/types.h>

/*
 * Starts `path` as a child that waits before exec: the child blocks reading `gate_fd`
 * until the parent writes
 * (the child closes its copy of `gate_write_fd`, so the parent's death also releases it) a byte (probes attached) or closes it (give up: the child exits
 * 127 without exec). Signal dispositions and mask are reset to defaults in the child, so the
 * command starts as it would from a shell. Returns the child's pid, or -errno.
 */
pid_t utap_spawn_gated(const char *path, char *const argv[], char *const envp[], int gate_fd,
                       int gate_write_fd);

/* Sets *flag to 1 on SIGINT, SIGTERM and SIGHUP, without SA_RESTART so blocking calls return. */
void utap_install_stop_handlers(volatile int *flag, volatile int *signo);

/*
 * A handler that does nothing, without SA_RESTART: sending `signo` to a thread makes its
 * blocking call (waitpid) return EINTR.
 */
void utap_install_wake_handler(int signo);

/*
 * Sets no_new_privs and keeps, in the calling thread only (capabilities are per thread),
 * the capabilities in `keep` (bit N: capability N) of those it has: effective and
 * permitted; inheritable and ambient cleared. Returns 0 or -errno.
 */
int utap_keep_only_capabilities(unsigned long long keep);

/*
 * BPF_LINK_CREATE for a uprobe multi-link (Linux 6.6+, newer than this libbpf): attaches
 * `prog_fd` at `cnt` file offsets of `path`, offset i with attach cookie i and USDT
 * semaphore ref_ctr_offsets[i] (0: none; the array may be NULL); return probes
 * when `retprobe`; only in process `pid` when pid > 0. Returns the link fd, or -errno.
 */
int utap_uprobe_multi_link(int prog_fd, const char *path, const unsigned long *offsets,
                           const unsigned long *ref_ctr_offsets, const unsigned long long *cookies,
                           unsigned int cnt, int retprobe, int pid);
#define UTAP_BPF_TRACE_UPROBE_MULTI 48

/*
 * ptrace(2) without the variadic signature Swift cannot call. errno is cleared first, so for
 * PTRACE_PEEK* a result of -1 is an error only when errno is then nonzero. Returns what
 * ptrace() returns (-1 with errno on failure).
 */
long utap_ptrace(int request, pid_t pid, void *addr, void *data);

/*
 * Loads and stores ordered against the other side of a BPF ring buffer (the kernel's
 * smp_load_acquire / smp_store_release pairing), which Swift cannot express on memory it
 * does not own.
 */
static inline unsigned long long utap_load_acquire_u64(const void *p)
{
    return __atomic_load_n((const unsigned long long *)p, __ATOMIC_ACQUIRE);
}

static inline unsigned int utap_load_acquire_u32(const void *p)
{
    return __atomic_load_n((const unsigned int *)p, __ATOMIC_ACQUIRE);
}

static inline void utap_store_release_u64(void *p, unsigned long long v)
{
    __atomic_store_n((unsigned long long *)p, v, __ATOMIC_RELEASE);
}
#endif
