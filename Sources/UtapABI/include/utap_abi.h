/*
 * utap_abi.h: every layout shared by the BPF programs (bpf/utap.bpf.c) and the Swift loader.
 *
 * Changing anything here changes the committed BPF object: run `make bpf` and commit both.
 * Only fixed-width types, so the BPF target and x86-64 agree on every offset.
 */
#ifndef UTAP_ABI_H
#define UTAP_ABI_H

#ifdef __bpf__
#include <linux/types.h>
#else
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;
typedef int64_t __s64;
#endif

/* At most this many fields per probe (arg0..arg5 plus ret fit). */
#define UTAP_MAX_FIELDS 6
/*
 * Most bytes one string field reads, including the NUL: 255 kept bytes, one more to tell a
 * string of exactly the limit from a longer one, and the NUL.
 */
#define UTAP_STR_MAX 257
/* Longest record: header, values, every string field at its maximum, a user stack. Power of two. */
#define UTAP_RECORD_MAX 8192
/* User stack frames kept per event (--stack). */
#define UTAP_STACK_MAX 64
/* Pending entry timestamps kept per thread: the kernel's own uretprobe nesting limit. */
#define UTAP_MAX_DEPTH 64

/* Where a field's value comes from. */
enum utap_source {
    UTAP_SRC_ARG0 = 0,
    UTAP_SRC_ARG1 = 1,
    UTAP_SRC_ARG2 = 2,
    UTAP_SRC_ARG3 = 3,
    UTAP_SRC_ARG4 = 4,
    UTAP_SRC_ARG5 = 5,
    UTAP_SRC_RET = 6, /* rax */
    UTAP_SRC_RBX = 7, /* Go's second argument register */
};

/* What the BPF side does with a field: copy the 64-bit register, or read a user string. */
enum utap_field_kind {
    UTAP_FIELD_INT = 0,
    UTAP_FIELD_STR = 1,
};

/* Where a field's 64-bit value is read (utap_field_config.location). */
enum utap_location {
    UTAP_LOC_SOURCE = 0,   /* `source`: rdi, rsi, rdx, rcx, r8, r9, rax or rbx */
    UTAP_LOC_REGISTER = 1, /* the struct pt_regs slot `reg` (USDT %reg) */
    UTAP_LOC_MEMORY = 2,   /* `size` bytes of user memory at pt_regs slot `reg` + `value` */
    UTAP_LOC_CONSTANT = 3, /* `value` itself (USDT $imm) */
};

/* struct pt_regs as 8-byte slots (x86-64): the kernel's order. */
#define UTAP_PT_REGS_SLOTS 21

struct utap_field_config {
    __u8 source;   /* enum utap_source (UTAP_LOC_SOURCE) */
    __u8 kind;     /* enum utap_field_kind */
    __u16 str_len; /* UTAP_FIELD_STR: bytes to read at most, including the NUL (<= UTAP_STR_MAX) */
    __u8 location; /* enum utap_location */
    __u8 reg;      /* pt_regs slot (< UTAP_PT_REGS_SLOTS) */
    __u8 size;     /* UTAP_LOC_MEMORY: 1, 2, 4 or 8 */
    __u8 reserved;
    __s64 value;   /* UTAP_LOC_MEMORY: displacement; UTAP_LOC_CONSTANT: the constant */
};

/* What one attached program does on a hit (utap_probe_config.flags). */
enum utap_probe_flags {
    UTAP_PROBE_EMIT = 1,    /* send an event record */
    UTAP_PROBE_PUSH_TS = 2, /* entry: remember the entry time for a paired return probe */
    UTAP_PROBE_POP_TS = 4,  /* return: take the entry time back and report latency */
    UTAP_PROBE_COUNT = 8,   /* add one to the probe's hit counter (utap count) */
    UTAP_PROBE_BY_PID = 16, /* with COUNT: one counter per process, in `pid_counts` */
    UTAP_PROBE_HIST = 32,   /* return: add the latency to the probe's histogram (utap latency);
                             * with PUSH_TS: an entry that cannot be kept is a call lost */
    UTAP_PROBE_STACK = 64,  /* with EMIT: append the user stack to the record */
    UTAP_PROBE_ALL_REGS = 128, /* some field reads a register other than an argument (USDT) */
    UTAP_PROBE_RET_SITE = 256, /* an entry-side probe on a `ret`: acts as the return probe */
    UTAP_PROBE_FILTERED = 512, /* the session has a --filter: run it before recording */
    UTAP_PROBE_FOLLOW = 1024,  /* --follow-forks: only processes in `traced` count */
    UTAP_PROBE_INTEGERS = 2048, /* with EMIT: every field an argument, return value or constant
                                 * read as an integer, no stack: the record is written in place */
    UTAP_PROBE_SITES_MARK = 4096, /* with PUSH_TS: the return is seen on `ret` sites, which an
                                   * exception or a tail call skips, so an older entry at the
                                   * same stack pointer will never return */
};

/*
 * In place of a string field BPF could not read (its value's low half <= 0, high half this
 * struct's offset in the record): the pointer, and the file that address maps read-only
 * (ino 0 when none), for user space to read the string from.
 */
struct utap_string_origin {
    __u64 address;
    __u64 ino;
    __u64 dev;          /* the kernel's dev_t: major << 20 | minor */
    __u64 file_offset;
};

/* Settings fixed before load, in the object's read-only data (`settings`). */
struct utap_settings {
    __u32 tracer_tgid;  /* utap's own process: its hits are ignored */
    __u32 staging;      /* 1: integer records are batched per CPU (struct stage, utap.bpf.c) */
    __u64 wake_bytes;   /* wake the reader once a ring holds this much (a quarter of it) */
};

/*
 * Latency histogram buckets: log-linear, UTAP_HIST_SUB buckets per power of two, so a
 * percentile read from it is within 1/UTAP_HIST_SUB of its power of two. Bucket of v:
 * v < UTAP_HIST_SUB: v itself; else with k = floor(log2 v):
 * (k - UTAP_HIST_SUB_BITS + 1) * UTAP_HIST_SUB + ((v >> (k - UTAP_HIST_SUB_BITS)) & (UTAP_HIST_SUB - 1)).
 */
#define UTAP_HIST_SUB_BITS 2
#define UTAP_HIST_SUB (1 << UTAP_HIST_SUB_BITS)
/* A power of two so the verifier accepts a masked index; latencies reach only the first
 * (64 - UTAP_HIST_SUB_BITS + 1) * UTAP_HIST_SUB = 252. */
#define UTAP_HIST_BUCKETS (64 * UTAP_HIST_SUB)

/* One probe's latencies on one CPU (`hists`, a per-CPU array indexed by probe). */
struct utap_histogram {
    __u64 count;
    __u64 sum_ns;
    __u64 max_ns;
    __u64 buckets[UTAP_HIST_BUCKETS];
};

/* Key of `pid_counts`, the per-process hit counters of utap count --by-pid. */
struct utap_pid_key {
    __u32 probe;
    __u32 pid;
};

/*
 * One entry of the `probes` array map, indexed by the attach cookie. A return probe is
 * attached twice: a hidden entry program (PUSH_TS, whose `probe` is the return probe, so
 * entries too deep for the kernel count as loss of the return) and the return program
 * (EMIT | POP_TS).
 */
struct utap_probe_config {
    __u32 flags;
    __u32 nfields;
    __u32 probe;     /* the user's probe this attachment serves: events carry it, losses count to it */
    __u32 reserved;
    struct utap_field_config fields[UTAP_MAX_FIELDS];
};

/*
 * --filter, compiled to postfix: each instruction pushes a comparison's truth or combines
 * the two (AND, OR) or one (NOT) on top of a stack of bits. A hit is recorded when the
 * program leaves 1 on top. Kept in the one-entry `filter` array; count 0 = no filter.
 */
#define UTAP_FILTER_MAX 32

enum utap_filter_op {
    UTAP_FILTER_CMP = 0,
    UTAP_FILTER_AND = 1,
    UTAP_FILTER_OR = 2,
    UTAP_FILTER_NOT = 3,
};

/* What a comparison reads. */
enum utap_filter_operand {
    UTAP_OPERAND_ARG0 = 0, /* ..ARG5 = 5, RET = 6: as enum utap_source */
    UTAP_OPERAND_PID = 8,
    UTAP_OPERAND_TID = 9,
    UTAP_OPERAND_COMM = 10,    /* 16 bytes, == and != only, against value and value2 */
    UTAP_OPERAND_LATENCY = 11, /* return probes with a paired entry; else the test is false */
};

enum utap_filter_cmp {
    UTAP_CMP_EQ = 0,
    UTAP_CMP_NE = 1,
    UTAP_CMP_LT = 2,
    UTAP_CMP_LE = 3,
    UTAP_CMP_GT = 4,
    UTAP_CMP_GE = 5,
};

struct utap_filter_insn {
    __u8 op;      /* enum utap_filter_op */
    __u8 operand; /* enum utap_filter_operand */
    __u8 cmp;     /* enum utap_filter_cmp */
    __u8 is_signed;
    __u8 width;   /* bytes of the operand compared: 1, 2, 4 or 8 (sign- or zero-extended) */
    __u8 reserved[3];
    __u64 value;  /* the constant; COMM: the first 8 bytes of the name */
    __u64 value2; /* COMM: the next 8 bytes */
};

struct utap_filter {
    __u32 count;
    __u32 reserved;
    struct utap_filter_insn insns[UTAP_FILTER_MAX];
};

/* Event record flags. */
enum utap_event_flags {
    UTAP_EVENT_RETURN = 1,  /* fired on return */
    UTAP_EVENT_LATENCY = 2, /* latency_ns is valid */
    UTAP_EVENT_STACK = 4,   /* the record ends with a user stack, see below */
};

/*
 * One ring-buffer record. values[i] holds field i: the raw 64-bit register for integer
 * fields; for string fields (offset_from_record_start << 32) | (u32)read_result, where
 * read_result is bpf_probe_read_user_str's return (bytes copied including the NUL, or a
 * negative errno when the pointer could not be read; then the 8-byte pointer itself is
 * stored at the offset, for the reader to retry from user space). String bytes follow
 * the values.
 */
struct utap_event {
    __u64 ts_ns;      /* CLOCK_MONOTONIC */
    __u64 latency_ns; /* return events with UTAP_EVENT_LATENCY */
    __u32 pid;        /* thread group id */
    __u32 tid;
    __u32 probe;      /* utap_probe_config.probe */
    __u16 size;       /* bytes of this record */
    __u16 flags;      /* enum utap_event_flags */
    char comm[16];
    __u64 values[UTAP_MAX_FIELDS];
};

#define UTAP_EVENT_HEADER_SIZE 48 /* offsetof(struct utap_event, values) */

/*
 * A ring-buffer record holds one or more events back to back, each `size` bytes (a
 * multiple of 8); fewer than UTAP_EVENT_HEADER_SIZE bytes left over are padding.
 * Integer records are batched (settings.staging): up to UTAP_STAGE_BYTES of events of one
 * CPU go into the ring as one record.
 */
#define UTAP_STAGE_BYTES 4096

/* The `staged` map's value, one cache line per CPU: the timestamp of the oldest event
 * in the CPU's stage, 0 when it is empty. */
struct utap_staged_flag {
    __u64 oldest_ns;
    __u64 padding[7];
};

/*
 * A user stack (UTAP_EVENT_STACK) ends the record: N addresses (8 bytes each), then M
 * struct bpf_stack_build_id entries (32 bytes: status, build ID, file offset) for the same
 * frames, then N | M << 32 as a __u64. The build IDs and file offsets let frames be
 * symbolized after the process is gone, when its mappings can no longer be read.
 */
#define UTAP_BUILD_ID_FRAME_SIZE 32

#endif
