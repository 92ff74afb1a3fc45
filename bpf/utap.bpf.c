// SPDX-License-Identifier: GPL-2.0
/*
 * utap's generic uprobe programs. One object serves every probe: what a hit records is
 * looked up in the `probes` array by the attach cookie, so no compiler runs at trace time.
 * Layouts shared with Swift live in utap_abi.h.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "utap_abi.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load (utap_abi.h). tracer_tgid: a system-wide probe on write()
 * must not see the tracer's own output, or every event would cause another. */
const volatile struct utap_settings settings = {};

/*
 * Hits count only while the gate is open (the only variable of .bss, written by the
 * loader as that map's value): it opens once every link is attached and closes before
 * the first is detached. A file's entry and return probes are two links, put in and
 * taken out milliseconds apart; without the gate a trace began with returns whose
 * entries were not seen, and ended with returns whose entry events were not streamed.
 */
volatile __u32 gate_open = 0;

/* Sized by the loader before load (bpf_map__set_max_entries). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct utap_probe_config);
} probes SEC(".maps");

/* Records lost because the ring buffer was full, or returns the kernel will not report, per probe. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} lost SEC(".maps");

/* The session's --filter (utap_abi.h); count 0 lets every hit through. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct utap_filter);
} filter SEC(".maps");

/*
 * Never written, so always 0: the filter's verdict is mixed with it, and a value loaded
 * from a map is unknown to the verifier, so it does not track every bit pattern of the
 * evaluation stack (which would multiply its states past its limit). (The verdict went
 * through it by a store and a load, which another thread could come between.)
 */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} filter_verdict SEC(".maps");

/*
 * The traced process and every process it forks, by tgid. With --follow-forks probes are
 * attached system-wide, and a hit outside this set is ignored at once; without, the set
 * only serves to count the processes started (`forks`).
 */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, __u8);
} traced SEC(".maps");

/* Processes the traced ones started: without --follow-forks, why a trace may be empty. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} forks SEC(".maps");

/* Only the fields used, relocated by name against the running kernel's BTF (CO-RE). */
struct task_struct {
    int pid;
    int tgid;
} __attribute__((preserve_access_index));

struct super_block {
    unsigned int s_dev;
} __attribute__((preserve_access_index));

struct inode {
    unsigned long i_ino;
    struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
    struct inode *f_inode;
} __attribute__((preserve_access_index));

struct vm_area_struct {
    unsigned long vm_start;
    unsigned long vm_pgoff;
    unsigned long vm_flags;
    struct file *vm_file;
} __attribute__((preserve_access_index));

/* Hits per probe (utap count); sized by the loader. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

/* Hits per probe and process (utap count --by-pid). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct utap_pid_key);
    __type(value, __u64);
} pid_counts SEC(".maps");

/* The name of each process counted by --by-pid, per probe, taken at the probe's first hit
 * in it (the process may be gone by the time the report is read, or renamed by then). */
struct utap_comm {
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct utap_pid_key);
    __type(value, struct utap_comm);
} pid_comm SEC(".maps");

/* Latency histograms per probe (utap latency); sized by the loader. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct utap_histogram);
} hists SEC(".maps");

/*
 * One ring buffer per CPU, indexed by the CPU a hit runs on (uprobe programs cannot
 * migrate): two threads on two CPUs never contend for one ring's lock and producer
 * position, which cost more than the rest of a record (bench: 2 threads writing one
 * shared ring ran at 1.57x the counter floor, per-CPU rings at 1.19x). The loader
 * creates the rings and sizes them; the reader merges them by timestamp.
 */
struct ring {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 1);
    __type(key, __u32);
    __array(values, struct ring);
} events SEC(".maps");

/*
 * A record is assembled here, then copied into the ring buffer at its exact size. A
 * uprobe program can be preempted (multi-links run it with migration, not preemption,
 * disabled), and another thread then run it on the same CPU: `users` keeps that one
 * out (its event is counted lost) rather than let it overwrite a record half built.
 */
struct scratch {
    __u64 users;
    /* A copy of struct pt_regs, for fields naming any register (USDT arguments). */
    __u64 pt_regs[UTAP_PT_REGS_SLOTS + 3];
    /* Room past UTAP_RECORD_MAX so a write at any masked offset is provably in bounds. */
    __u8 buf[UTAP_RECORD_MAX + UTAP_STR_MAX + (8 + UTAP_BUILD_ID_FRAME_SIZE) * UTAP_STACK_MAX + 8];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct scratch);
} scratch SEC(".maps");

/* Entry times of the calls a thread has not returned from yet, innermost last. */
struct pending_calls {
    __u32 depth;
    __u32 reserved;
    __u64 ts[UTAP_MAX_DEPTH];
    __u64 sp[UTAP_MAX_DEPTH]; /* stack pointer at entry: return sp is sp + 8 */
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, struct pending_calls);
} pending SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct pending_calls);
} pending_zero SEC(".maps");

/*
 * A new process whose parent is traced is traced too (threads share the tgid already).
 * Its forking thread's pending calls go with it: the child returns from them too, on its
 * copy of the stack (the kernel copies hijacked returns likewise), so `fork%return` in
 * the child has the latency of the parent's call, as with the ptrace backend.
 */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(utap_fork, struct task_struct *parent, struct task_struct *child)
{
    __u32 parent_tgid = parent->tgid, child_tgid = child->tgid;
    if (parent_tgid == child_tgid || !bpf_map_lookup_elem(&traced, &parent_tgid))
        return 0;
    __u8 yes = 1;
    bpf_map_update_elem(&traced, &child_tgid, &yes, BPF_ANY);
    __u32 zero = 0;
    __u64 *started = bpf_map_lookup_elem(&forks, &zero);
    if (started)
        __sync_fetch_and_add(started, 1);
    __u32 parent_tid = parent->pid, child_tid = child->pid;
    struct pending_calls *calls = bpf_map_lookup_elem(&pending, &parent_tid);
    if (calls)
        bpf_map_update_elem(&pending, &child_tid, calls, BPF_ANY);
    return 0;
}

/* A process leaves the set when its last thread, the leader, exits (its pid may be reused). */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(utap_exit, struct task_struct *task)
{
    __u32 tgid = task->tgid;
    if (task->pid == task->tgid)
        bpf_map_delete_elem(&traced, &tgid);
    return 0;
}

/*
 * Counters are per CPU, yet updated atomically: uprobe programs run with preemption
 * enabled, so two threads on one CPU can interleave a plain load-add-store and lose a
 * count. Counts must equal the target's own.
 */
static __always_inline void count_lost(__u32 slot)
{
    __u64 *n = bpf_map_lookup_elem(&lost, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/*
 * The registers a field can name, indexed by enum utap_source. Copied up front: the
 * verifier refuses context loads through a computed pointer, which a switch would become.
 */
/*
 * Where a string BPF could not read lies in a file, for user space to read it there when
 * the process is gone by then (a short command): its page was never touched, so it holds
 * what the file does. Only read-only mappings: a written page can be swapped out.
 */
static long string_origin_of(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
    struct utap_string_origin *o = data;
    struct file *file = vma->vm_file;
    if (!file || (vma->vm_flags & 2 /* VM_WRITE */))
        return 0;
    o->ino = file->f_inode->i_ino;
    o->dev = file->f_inode->i_sb->s_dev;
    o->file_offset = o->address - vma->vm_start + (vma->vm_pgoff << 12);
    return 0;
}

static __always_inline void load_sources(struct pt_regs *ctx, __u64 regs[8])
{
    regs[UTAP_SRC_ARG0] = ctx->rdi;
    regs[UTAP_SRC_ARG1] = ctx->rsi;
    regs[UTAP_SRC_ARG2] = ctx->rdx;
    regs[UTAP_SRC_ARG3] = ctx->rcx;
    regs[UTAP_SRC_ARG4] = ctx->r8;
    regs[UTAP_SRC_ARG5] = ctx->r9;
    regs[UTAP_SRC_RET] = ctx->rax;
    regs[UTAP_SRC_RBX] = ctx->rbx;
}

/* A field's raw 64-bit value (utap_abi.h, enum utap_location). */
static __always_inline __u64 read_location(const struct utap_field_config *f, __u64 regs[8], __u64 *pt_regs)
{
    __u64 v = 0;
    switch (f->location) {
    case UTAP_LOC_SOURCE:
        return regs[f->source & 7];
    case UTAP_LOC_REGISTER:
        return pt_regs[f->reg < UTAP_PT_REGS_SLOTS ? f->reg : 0];
    case UTAP_LOC_MEMORY: {
        __u64 address = pt_regs[f->reg < UTAP_PT_REGS_SLOTS ? f->reg : 0] + f->value;
        __u32 size = f->size;
        if (size > 8)
            size = 8;
        /* Little-endian: the low bytes of v receive the value; the decoder narrows it. */
        if (bpf_probe_read_user(&v, size, (const void *)address))
            v = 0;
        return v;
    }
    case UTAP_LOC_CONSTANT:
        return f->value;
    default:
        return 0;
    }
}

/* The ring of the CPU this hit runs on, or NULL (a CPU brought online after the rings
 * were made has none). */
static __always_inline void *this_cpu_ring(void)
{
    __u32 cpu = bpf_get_smp_processor_id();
    return bpf_map_lookup_elem(&events, &cpu);
}

/*
 * Waking the reader per record costs an IPI per hit; the reader polls every few ms
 * anyway, so wake it only when the ring is filling up.
 */
static __always_inline __u64 wake_flag(void *ring)
{
    return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) > settings.wake_bytes ? BPF_RB_FORCE_WAKEUP
                                                                            : BPF_RB_NO_WAKEUP;
}

static __always_inline void fill_header(struct utap_event *e, const struct utap_probe_config *cfg,
                                        __u64 now, __u64 latency, __u16 flags, __u64 pid_tgid)
{
    e->ts_ns = now;
    e->latency_ns = latency;
    e->pid = pid_tgid >> 32;
    e->tid = (__u32)pid_tgid;
    e->probe = cfg->probe;
    e->flags = flags;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/*
 * Integer records are batched: written into this CPU's stage and sent to the ring as one
 * record once it is nearly full, or when the reader asks (utap_flush).
 * A ring reservation and commit per event cost more than writing the event (2 threads,
 * bench/floor.bpf.c's writer: 1.19x the counter floor a hit, 1.09x when it batched the
 * same records). Writers keep preemption off while
 * they hold the stage, so no other thread's run can find it held mid-write and overtake
 * its events; `users` keeps the flush out when its interrupt lands mid-write.
 */
struct stage {
    __u64 users;
    __u32 used;
    __u32 reserved;
    /* Room past UTAP_STAGE_BYTES for one whole event at any masked offset. */
    __u8 buf[UTAP_STAGE_BYTES + sizeof(struct utap_event)];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct stage);
} stages SEC(".maps");

/*
 * The time of the oldest event in each CPU's stage (0: empty), one cache line per CPU,
 * mapped by the reader: it reads no ring past that time, and asks a CPU to flush only
 * when its stage has waited a while. Sized by the loader (possible CPUs).
 */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct utap_staged_flag);
} staged SEC(".maps");

/* Kernel 6.10 and later (the loader turns staging on only where they exist). */
extern void bpf_preempt_disable(void) __ksym __weak;
extern void bpf_preempt_enable(void) __ksym __weak;

/* Claims `*users` for this run; false when someone else holds it. Atomic adds (no fetch
 * needed): of two claims at once, at most the first proceeds. */
static __always_inline int claim(__u64 *users)
{
    __sync_fetch_and_add(users, 1);
    if (*(volatile __u64 *)users != 1) {
        __sync_fetch_and_add(users, -1);
        return 0;
    }
    return 1;
}

static __always_inline void release(__u64 *users)
{
    __sync_fetch_and_add(users, -1);
}

/*
 * Holds this CPU's stage for a writer, which has preemption off: the only run that can
 * come between is utap_flush, in an interrupt on this CPU, and that sees this CPU's
 * plain stores in program order. (Two locked adds per event cost 14 ns of a run's 121
 * by bpf_stats, and about 10 ms of a 2 x 1M loop's 690, side by side.) The barriers keep
 * the compiler from moving the stage's reads and writes out of the held span.
 */
static __always_inline int hold_stage(struct stage *st)
{
    if (*(volatile __u64 *)&st->users)
        return 0;
    *(volatile __u64 *)&st->users = 1;
    asm volatile("" ::: "memory");
    return 1;
}

static __always_inline void let_go_of_stage(struct stage *st)
{
    asm volatile("" ::: "memory");
    *(volatile __u64 *)&st->users = 0;
}

static __always_inline void mark_staged(__u64 oldest)
{
    __u32 cpu = bpf_get_smp_processor_id();
    struct utap_staged_flag *flag = bpf_map_lookup_elem(&staged, &cpu);
    if (flag)
        *(volatile __u64 *)&flag->oldest_ns = oldest;
}

/* Sends the staged events (the stage is claimed) as one record; each is counted lost
 * when the ring is full. */
static __always_inline void send_stage(struct stage *st)
{
    /* 64 bits, and the empty asm, keep the compiler from sizing the output by another copy
     * (a zero-extended one) the verifier sees unbounded. */
    __u64 used = st->used;
    if (used == 0)
        return;
    if (used > UTAP_STAGE_BYTES)
        used = UTAP_STAGE_BYTES;
    asm volatile("" : "+r"(used));
    void *ring = this_cpu_ring();
    if (!ring || bpf_ringbuf_output(ring, st->buf, used, wake_flag(ring))) {
        __u32 off = 0;
        for (int i = 0; i < UTAP_STAGE_BYTES / UTAP_EVENT_HEADER_SIZE; i++) {
            if (off + UTAP_EVENT_HEADER_SIZE > used)
                break;
            struct utap_event *e = (struct utap_event *)&st->buf[off & (UTAP_STAGE_BYTES - 1)];
            count_lost(e->probe);
            if (e->size < UTAP_EVENT_HEADER_SIZE)
                break;
            off += e->size;
        }
    }
    st->used = 0;
    mark_staged(0);
}

/* Sends this CPU's stage ahead of a record written to the ring directly, so the ring
 * holds this CPU's events in the order they were made. */
static __always_inline void send_stage_first(void)
{
    __u32 zero = 0;
    struct stage *st = settings.staging ? bpf_map_lookup_elem(&stages, &zero) : 0;
    if (!st)
        return;
    bpf_preempt_disable();
    if (st->used && hold_stage(st)) {
        send_stage(st);
        let_go_of_stage(st);
    }
    bpf_preempt_enable();
}

static __always_inline void fill_integers(struct utap_event *e, struct pt_regs *ctx,
                                          const struct utap_probe_config *cfg, __u32 nfields,
                                          __u64 now, __u64 latency, __u16 flags, __u64 pid_tgid)
{
    __u64 regs[8];
    load_sources(ctx, regs);
    fill_header(e, cfg, now, latency, flags, pid_tgid);
    for (int i = 0; i < UTAP_MAX_FIELDS; i++) {
        if (i >= nfields)
            break;
        const struct utap_field_config *f = &cfg->fields[i];
        e->values[i] = f->location == UTAP_LOC_CONSTANT ? (__u64)f->value : regs[f->source & 7];
    }
    e->size = UTAP_EVENT_HEADER_SIZE + 8 * (nfields < UTAP_MAX_FIELDS ? nfields : UTAP_MAX_FIELDS);
}

/* Stages the event; false when the stage is held (never expected, see struct stage). */
static __always_inline int stage_integers(struct stage *st, struct pt_regs *ctx,
                                          const struct utap_probe_config *cfg, __u32 nfields,
                                          __u64 now, __u64 latency, __u16 flags, __u64 pid_tgid)
{
    if (!hold_stage(st))
        return 0;
    __u32 used = st->used & (UTAP_STAGE_BYTES - 1);
    struct utap_event *e = (struct utap_event *)&st->buf[used];
    fill_integers(e, ctx, cfg, nfields, now, latency, flags, pid_tgid);
    st->used = used + e->size;
    if (used == 0)
        mark_staged(now);
    if (st->used > UTAP_STAGE_BYTES - sizeof(struct utap_event))
        send_stage(st);
    let_go_of_stage(st);
    return 1;
}

/*
 * A record of integer fields only (UTAP_PROBE_INTEGERS): into the stage, or reserved in
 * the ring and written there. The verifier needs a constant reservation size, so it is
 * rounded up to 2, 4 or 6 fields; the event's `size` is exact.
 */
static __always_inline void emit_integers(struct pt_regs *ctx, const struct utap_probe_config *cfg,
                                          __u64 now, __u64 latency, __u16 flags, __u64 pid_tgid)
{
    __u32 nfields = cfg->nfields;
    __u32 zero = 0;
    struct stage *st = settings.staging ? bpf_map_lookup_elem(&stages, &zero) : 0;
    if (st) {
        bpf_preempt_disable();
        int staged = stage_integers(st, ctx, cfg, nfields, now, latency, flags, pid_tgid);
        bpf_preempt_enable();
        if (staged)
            return;
    }
    void *ring = this_cpu_ring();
    if (!ring) {
        count_lost(cfg->probe);
        return;
    }
    struct utap_event *e;
    if (nfields <= 2)
        e = bpf_ringbuf_reserve(ring, UTAP_EVENT_HEADER_SIZE + 2 * 8, 0);
    else if (nfields <= 4)
        e = bpf_ringbuf_reserve(ring, UTAP_EVENT_HEADER_SIZE + 4 * 8, 0);
    else
        e = bpf_ringbuf_reserve(ring, sizeof(struct utap_event), 0);
    if (!e) {
        count_lost(cfg->probe);
        return;
    }
    fill_integers(e, ctx, cfg, nfields, now, latency, flags, pid_tgid);
    bpf_ringbuf_submit(e, wake_flag(ring));
}

/* The record of a probe with strings, registers or a stack, built in `s` (claimed). */
static __always_inline void build_and_send(struct pt_regs *ctx, const struct utap_probe_config *cfg,
                                           struct scratch *s, __u64 now, __u64 latency, __u16 flags,
                                           __u64 pid_tgid)
{
    struct utap_event *e = (struct utap_event *)s->buf;
    __u32 nfields = cfg->nfields;
    if (nfields > UTAP_MAX_FIELDS)
        nfields = UTAP_MAX_FIELDS;
    __u32 off = UTAP_EVENT_HEADER_SIZE + nfields * 8;
    __u64 regs[8];

    load_sources(ctx, regs);
    if (cfg->flags & UTAP_PROBE_ALL_REGS)
        bpf_probe_read_kernel(s->pt_regs, 8 * UTAP_PT_REGS_SLOTS, ctx);
    fill_header(e, cfg, now, latency, flags, pid_tgid);

    /* A bounded loop: the verifier walks it, no unrolling needed. */
    for (int i = 0; i < UTAP_MAX_FIELDS; i++) {
        if (i >= nfields)
            break;
        const struct utap_field_config *f = &cfg->fields[i];
        __u64 v = read_location(f, regs, s->pt_regs);
        if (f->kind == UTAP_FIELD_STR) {
            __u32 len = f->str_len;
            if (len > UTAP_STR_MAX)
                len = UTAP_STR_MAX;
            off &= UTAP_RECORD_MAX - 1; /* proves to the verifier the copy stays in buf */
            long r = bpf_probe_read_user_str(&s->buf[off], len, (const void *)v);
            e->values[i] = ((__u64)off << 32) | (__u32)r;
            if (r > 0) {
                off += r;
            } else {
                /*
                 * Usually a page not faulted in yet (a constant string never touched),
                 * which BPF cannot fault in: hand the pointer to user space to read, and
                 * the file it comes from, if any.
                 */
                struct utap_string_origin o = { .address = v };
                bpf_find_vma(bpf_get_current_task_btf(), v, string_origin_of, &o, 0);
                __builtin_memcpy(&s->buf[off], &o, sizeof(o));
                off += sizeof(o);
            }
        } else {
            e->values[i] = v;
        }
    }
    if (cfg->flags & UTAP_PROBE_STACK) {
        /* The kernel walks frame pointers; code built without them yields a short stack. */
        off &= UTAP_RECORD_MAX - 1;
        long bytes = bpf_get_stack(ctx, &s->buf[off], 8 * UTAP_STACK_MAX, BPF_F_USER_STACK);
        __u64 frames = bytes > 0 ? (__u64)bytes / 8 : 0;
        off += frames * 8;
        off &= UTAP_RECORD_MAX - 1;
        bytes = bpf_get_stack(ctx, &s->buf[off], UTAP_BUILD_ID_FRAME_SIZE * UTAP_STACK_MAX,
                              BPF_F_USER_STACK | BPF_F_USER_BUILD_ID);
        __u64 ids = bytes > 0 ? (__u64)bytes / UTAP_BUILD_ID_FRAME_SIZE : 0;
        off += ids * UTAP_BUILD_ID_FRAME_SIZE;
        off &= UTAP_RECORD_MAX - 1;
        *(__u64 *)&s->buf[off] = frames | ids << 32;
        off += 8;
        e->flags |= UTAP_EVENT_STACK;
    }
    /* Every record is shorter than UTAP_RECORD_MAX: the mask only convinces the verifier. */
    off &= UTAP_RECORD_MAX - 1;
    e->size = off;

    void *ring = this_cpu_ring();
    if (!ring || bpf_ringbuf_output(ring, s->buf, off, wake_flag(ring)))
        count_lost(cfg->probe);
}

/* `pid_tgid`: bpf_get_current_pid_tgid(), taken once a hit (each call is a helper call). */
static __always_inline void emit(struct pt_regs *ctx, const struct utap_probe_config *cfg,
                                 __u64 now, __u64 latency, __u16 flags, __u64 pid_tgid)
{
    if (cfg->flags & UTAP_PROBE_INTEGERS) {
        emit_integers(ctx, cfg, now, latency, flags, pid_tgid);
        return;
    }
    send_stage_first();
    __u32 zero = 0;
    struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
    if (!s)
        return;
    if (!claim(&s->users)) {
        count_lost(cfg->probe);
        return;
    }
    build_and_send(ctx, cfg, s, now, latency, flags, pid_tgid);
    release(&s->users);
}

static __always_inline struct pending_calls *pending_for(__u32 tid, int create)
{
    struct pending_calls *p = bpf_map_lookup_elem(&pending, &tid);
    if (p || !create)
        return p;
    __u32 zero = 0;
    struct pending_calls *blank = bpf_map_lookup_elem(&pending_zero, &zero);
    if (!blank)
        return 0;
    bpf_map_update_elem(&pending, &tid, blank, BPF_NOEXIST);
    return bpf_map_lookup_elem(&pending, &tid);
}

/*
 * Drops the calls left by longjmp or an exception: entries whose stack pointer is below
 * `sp` (their frames are gone), and with `equal_too` one at `sp` as well. At most 8 a
 * time: each entry and return clears what it finds, so they do not pile up.
 */
static __always_inline void drop_abandoned(struct pending_calls *p, __u64 sp, int equal_too)
{
    for (int i = 0; i < 8; i++) {
        __u32 d = p->depth;
        if (d == 0 || d > UTAP_MAX_DEPTH)
            break;
        __u64 top_sp = p->sp[(d - 1) & (UTAP_MAX_DEPTH - 1)];
        if (top_sp > sp || (top_sp == sp && !equal_too))
            break;
        p->depth = d - 1;
    }
}

static __always_inline void count_hit(const struct utap_probe_config *cfg)
{
    if (cfg->flags & UTAP_PROBE_BY_PID) {
        struct utap_pid_key key = { .probe = cfg->probe, .pid = bpf_get_current_pid_tgid() >> 32 };
        __u64 *n = bpf_map_lookup_elem(&pid_counts, &key);
        if (!n) {
            /* Threads on two CPUs may both get here: whichever insert loses finds the
             * winner's element on the second lookup. */
            __u64 zero = 0;
            bpf_map_update_elem(&pid_counts, &key, &zero, BPF_NOEXIST);
            n = bpf_map_lookup_elem(&pid_counts, &key);
            struct utap_comm name = {};
            bpf_get_current_comm(name.comm, sizeof(name.comm));
            bpf_map_update_elem(&pid_comm, &key, &name, BPF_NOEXIST);
        }
        if (n)
            __sync_fetch_and_add(n, 1);
        else
            count_lost(cfg->probe); /* the table is full */
        return;
    }
    __u32 probe = cfg->probe;
    __u64 *n = bpf_map_lookup_elem(&counts, &probe);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* floor(log2(v)) for v > 0, by halving the search range: no loops for the verifier. */
static __always_inline __u32 log2_u64(__u64 v)
{
    __u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

static __always_inline void add_latency(const struct utap_probe_config *cfg, __u64 ns)
{
    __u32 probe = cfg->probe;
    struct utap_histogram *h = bpf_map_lookup_elem(&hists, &probe);
    if (!h)
        return;
    __u32 bucket = ns;
    if (ns >= UTAP_HIST_SUB) {
        __u32 k = log2_u64(ns);
        bucket = (k - UTAP_HIST_SUB_BITS + 1) * UTAP_HIST_SUB + ((ns >> (k - UTAP_HIST_SUB_BITS)) & (UTAP_HIST_SUB - 1));
    }
    __sync_fetch_and_add(&h->buckets[bucket & (UTAP_HIST_BUCKETS - 1)], 1);
    __sync_fetch_and_add(&h->count, 1);
    __sync_fetch_and_add(&h->sum_ns, ns);
    if (ns > h->max_ns)
        h->max_ns = ns;
}

/* The operand narrowed to its width, sign- or zero-extended back to 64 bits. */
static __always_inline __u64 narrowed(__u64 v, __u8 width, __u8 is_signed)
{
    switch (width) {
    case 1: return is_signed ? (__u64)(__s64)(__s8)v : (__u8)v;
    case 2: return is_signed ? (__u64)(__s64)(__s16)v : (__u16)v;
    case 4: return is_signed ? (__u64)(__s64)(__s32)v : (__u32)v;
    default: return v;
    }
}

static __always_inline int compare(__u64 a, __u64 b, __u8 cmp, __u8 is_signed)
{
    switch (cmp) {
    case UTAP_CMP_EQ: return a == b;
    case UTAP_CMP_NE: return a != b;
    case UTAP_CMP_LT: return is_signed ? (__s64)a < (__s64)b : a < b;
    case UTAP_CMP_LE: return is_signed ? (__s64)a <= (__s64)b : a <= b;
    case UTAP_CMP_GT: return is_signed ? (__s64)a > (__s64)b : a > b;
    case UTAP_CMP_GE: return is_signed ? (__s64)a >= (__s64)b : a >= b;
    default: return 0;
    }
}

/*
 * Runs the --filter program for this hit. `latency_ok` says whether `latency` holds a
 * paired entry-to-return time. A global function: the verifier checks its loop once,
 * not at every call site of every program (which doubled load time).
 */
__attribute__((noinline)) int passes_filter(struct pt_regs *ctx, __u64 latency, int latency_ok)
{
    __u32 zero = 0;
    const struct utap_filter *f = bpf_map_lookup_elem(&filter, &zero);
    if (!f)
        return 1;
    __u64 regs[8];
    load_sources(ctx, regs);
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    char comm[16] = {};
    bpf_get_current_comm(comm, sizeof(comm));
    __u64 stack = 0; /* bit 0 is the top */
    for (int i = 0; i < UTAP_FILTER_MAX; i++) {
        if (i >= f->count)
            break;
        const struct utap_filter_insn *in = &f->insns[i];
        switch (in->op) {
        case UTAP_FILTER_CMP: {
            int truth;
            if (in->operand == UTAP_OPERAND_COMM) {
                int same = *(__u64 *)&comm[0] == in->value && *(__u64 *)&comm[8] == in->value2;
                truth = in->cmp == UTAP_CMP_NE ? !same : same;
            } else if (in->operand == UTAP_OPERAND_LATENCY && !latency_ok) {
                truth = 0;
            } else {
                __u64 v;
                if (in->operand == UTAP_OPERAND_PID)
                    v = pid_tgid >> 32;
                else if (in->operand == UTAP_OPERAND_TID)
                    v = (__u32)pid_tgid;
                else if (in->operand == UTAP_OPERAND_LATENCY)
                    v = latency;
                else
                    v = regs[in->operand & 7];
                truth = compare(narrowed(v, in->width, in->is_signed), in->value, in->cmp, in->is_signed);
            }
            stack = (stack << 1) | (truth ? 1 : 0);
            break;
        }
        case UTAP_FILTER_AND:
            stack = (stack >> 2) << 1 | ((stack & 1) & ((stack >> 1) & 1));
            break;
        case UTAP_FILTER_OR:
            stack = (stack >> 2) << 1 | ((stack & 1) | ((stack >> 1) & 1));
            break;
        case UTAP_FILTER_NOT:
            stack ^= 1;
            break;
        }
    }
    __u64 *blur = bpf_map_lookup_elem(&filter_verdict, &zero);
    if (!blur)
        return 1;
    return (stack ^ *(volatile __u64 *)blur) & 1;
}

/* What this hit should do, or NULL when it is utap's own process or the gate is closed. */
static __always_inline const struct utap_probe_config *config_of_hit(struct pt_regs *ctx, __u64 pid_tgid)
{
    if (!gate_open || pid_tgid >> 32 == settings.tracer_tgid)
        return 0;
    __u32 id = (__u32)bpf_get_attach_cookie(ctx);
    const struct utap_probe_config *cfg = bpf_map_lookup_elem(&probes, &id);
    if (cfg && (cfg->flags & UTAP_PROBE_FOLLOW)) {
        __u32 tgid = pid_tgid >> 32;
        if (!bpf_map_lookup_elem(&traced, &tgid))
            return 0;
    }
    return cfg;
}

/*
 * A call of the probe's function ends; the caller's stack pointer is `ret_sp` (after
 * the `ret`): from a uretprobe, or from a probe on a `ret` instruction itself.
 */
static __always_inline int returned(struct pt_regs *ctx, const struct utap_probe_config *cfg, __u64 ret_sp,
                                    __u64 pid_tgid)
{
    __u64 now = bpf_ktime_get_ns();
    __u64 latency = 0;
    __u16 flags = UTAP_EVENT_RETURN;

    if (cfg->flags & UTAP_PROBE_POP_TS) {
        struct pending_calls *p = pending_for((__u32)pid_tgid, 0);
        if (p) {
            /* This call entered with its return address at ret_sp - 8. */
            drop_abandoned(p, ret_sp - 8, 0);
            __u32 d = p->depth;
            if (d > 0 && d <= UTAP_MAX_DEPTH) {
                __u32 top = (d - 1) & (UTAP_MAX_DEPTH - 1);
                if (p->sp[top] + 8 == ret_sp) {
                    latency = now - p->ts[top];
                    flags |= UTAP_EVENT_LATENCY;
                    p->depth = d - 1;
                }
            }
        }
    }
    if ((cfg->flags & UTAP_PROBE_FILTERED) && !passes_filter(ctx, latency, flags & UTAP_EVENT_LATENCY))
        return 0;
    if ((cfg->flags & UTAP_PROBE_HIST) && (flags & UTAP_EVENT_LATENCY))
        add_latency(cfg, latency);
    if (cfg->flags & UTAP_PROBE_COUNT)
        count_hit(cfg);
    if (cfg->flags & UTAP_PROBE_EMIT)
        emit(ctx, cfg, now, latency, flags, pid_tgid);
    return 0;
}


static __always_inline int on_entry(struct pt_regs *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    const struct utap_probe_config *cfg = config_of_hit(ctx, pid_tgid);
    if (!cfg)
        return 0;
    /* A probe on a `ret`: the return happens as this instruction runs. */
    if (cfg->flags & UTAP_PROBE_RET_SITE)
        return returned(ctx, cfg, ctx->rsp + 8, pid_tgid);
    __u64 now = bpf_ktime_get_ns();

    if (cfg->flags & UTAP_PROBE_PUSH_TS) {
        struct pending_calls *p = pending_for((__u32)pid_tgid, 1);
        if (p) {
            /*
             * On ret sites an entry at this very stack pointer is gone too (an exception
             * out of the previous call from this frame); a uretprobe's chained tail call
             * keeps it, as each of its returns comes.
             */
            drop_abandoned(p, ctx->rsp, cfg->flags & UTAP_PROBE_SITES_MARK);
            __u32 d = p->depth;
            if (d < UTAP_MAX_DEPTH) {
                /* Checked, and masked too: the compiler may test one copy of d and index
                 * with another, which the verifier then sees unbounded; the empty asm
                 * keeps it from dropping the mask as redundant. */
                __u32 i = d;
                asm volatile("" : "+r"(i));
                i &= UTAP_MAX_DEPTH - 1;
                p->ts[i] = now;
                p->sp[i] = ctx->rsp;
                p->depth = d + 1;
            } else if (!(cfg->flags & UTAP_PROBE_SITES_MARK) || (cfg->flags & UTAP_PROBE_HIST)) {
                /* The kernel will not hijack this return either: its return is lost. On
                 * ret sites the return is still seen, without its latency: lost only
                 * when the latency is what is recorded. */
                count_lost(cfg->probe);
            }
        }
    }
    if ((cfg->flags & UTAP_PROBE_FILTERED) && (cfg->flags & (UTAP_PROBE_COUNT | UTAP_PROBE_EMIT)) &&
        !passes_filter(ctx, 0, 0))
        return 0;
    if (cfg->flags & UTAP_PROBE_COUNT)
        count_hit(cfg);
    if (cfg->flags & UTAP_PROBE_EMIT)
        emit(ctx, cfg, now, 0, 0, pid_tgid);
    return 0;
}

static __always_inline int on_return(struct pt_regs *ctx)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    const struct utap_probe_config *cfg = config_of_hit(ctx, pid_tgid);
    if (!cfg)
        return 0;
    return returned(ctx, cfg, ctx->rsp, pid_tgid);
}


/*
 * Each handler is loaded twice: for the perf_event attach path and, with
 * expected_attach_type BPF_TRACE_UPROBE_MULTI set by the loader, for uprobe multi-links
 * (one link per file, detached with one RCU grace period instead of one per probe). The
 * loader keeps only the pair it will use.
 */
SEC("uprobe")
int utap_entry(struct pt_regs *ctx) { return on_entry(ctx); }

SEC("uretprobe")
int utap_return(struct pt_regs *ctx) { return on_return(ctx); }

SEC("uprobe")
int utap_entry_multi(struct pt_regs *ctx) { return on_entry(ctx); }

SEC("uretprobe")
int utap_return_multi(struct pt_regs *ctx) { return on_return(ctx); }

/*
 * Run by the reader on a CPU (BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU: an interrupt
 * there, or its own task with preemption off) whose stage has waited too long: sends what
 * the CPU has staged. Returns 1 when a writer it interrupted holds the stage: the reader
 * asks again.
 */
SEC("raw_tp")
int utap_flush(void *ctx)
{
    __u32 zero = 0;
    struct stage *st = bpf_map_lookup_elem(&stages, &zero);
    if (!st)
        return 0;
    /* Nothing interrupts this run to write the stage (see hold_stage). */
    if (*(volatile __u64 *)&st->users)
        return 1;
    send_stage(st);
    return 0;
}
