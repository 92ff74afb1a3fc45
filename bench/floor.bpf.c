// The floor: the least a uprobe-driven BPF tool can do per hit, count it. And
// the least a streaming tool can do: write a record of the same fields utap's
// records hold into the ring of the CPU the hit runs on.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

SEC("uprobe")
int count_hit(void *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&hits, &key);

	// Per-CPU slot: no atomics, no cache-line bouncing between threads.
	if (n)
		*n += 1;
	return 0;
}

// The same on return: with the entry program, the floor of an entry+return pair.
SEC("uretprobe")
int count_return(void *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&hits, &key);

	if (n)
		*n += 1;
	return 0;
}

// One ring per CPU, created and inserted by floor.c ("ring" mode).
struct ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 256);
	__type(key, __u32);
	__array(values, struct ring);
} rings SEC(".maps");

// The fields of a utap record with two arguments: time, latency, process,
// thread, probe, size, flags, thread name, arguments.
struct record {
	__u64 ts, latency;
	__u32 pid, tid, probe;
	__u16 size, flags;
	char comm[16];
	__u64 args[2];
};

SEC("uprobe")
int record_hit(struct pt_regs *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&rings, &cpu);

	if (!ring)
		return 0;
	struct record *r = bpf_ringbuf_reserve(ring, sizeof(*r), 0);
	if (!r)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	r->ts = bpf_ktime_get_ns();
	r->latency = 0;
	r->pid = pid_tgid >> 32;
	r->tid = (__u32)pid_tgid;
	r->probe = 0;
	r->size = sizeof(*r);
	r->flags = 0;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	r->args[0] = ctx->rdi;
	r->args[1] = ctx->rsi;
	// The reader polls; no wake-up per record (as utap).
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
