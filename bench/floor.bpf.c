// The floor: the least a uprobe-driven BPF tool can do per hit, count it.
#include <linux/bpf.h>
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

char LICENSE[] SEC("license") = "GPL";
