// floor BINARY FILE_OFFSET [pair|ring]
//
// Attaches floor.bpf.c's counter as a uprobe (perf_event, all processes) at
// FILE_OFFSET bytes into BINARY, prints "attached", waits for SIGINT/SIGTERM,
// then prints "hits=<n>" (sum over CPUs).
//
// "pair" adds a uretprobe counter. "ring" attaches the record writer instead:
// one ring buffer per CPU (32 MiB in all, as utap), read every 5 ms by a
// reader that only counts the records; hits=<records read>.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "floor.skel.h"

static unsigned long long records;

static int count_record(void *ctx, void *data, size_t size)
{
	(void)data;
	(void)size;
	++*(unsigned long long *)ctx;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3 && !(argc == 4 && (strcmp(argv[3], "pair") == 0 || strcmp(argv[3], "ring") == 0))) {
		fprintf(stderr, "usage: %s BINARY FILE_OFFSET [pair|ring]\n", argv[0]);
		return 2;
	}
	int ring_mode = argc == 4 && strcmp(argv[3], "ring") == 0;
	char *end;
	errno = 0;
	unsigned long long off = strtoull(argv[2], &end, 0);
	if (errno || *end || end == argv[2]) {
		fprintf(stderr, "floor: bad offset '%s'\n", argv[2]);
		return 2;
	}

	// Block the stop signals before anything else so none is lost between
	// "attached" and sigwait(); sigwait also works when the shell started us
	// with SIGINT ignored.
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	sigprocmask(SIG_BLOCK, &stop, NULL);

	int ncpu = libbpf_num_possible_cpus();
	if (ncpu < 1 || ncpu > 256) {
		fprintf(stderr, "floor: cannot count CPUs (or more than 256)\n");
		return 1;
	}
	struct floor_bpf *skel = floor_bpf__open();
	int ring_fds[256];
	struct ring_buffer *reader = NULL;
	if (skel && ring_mode) {
		// 32 MiB in all, each ring a power of two (utap's sizes).
		__u32 ring_bytes = 4096;
		while (ring_bytes * 2 <= (32u << 20) / (unsigned)ncpu)
			ring_bytes *= 2;
		for (int i = 0; i < ncpu; i++) {
			ring_fds[i] = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "floor_ring", 0, 0, ring_bytes, NULL);
			if (ring_fds[i] < 0) {
				fprintf(stderr, "floor: ring buffer: %s\n", strerror(errno));
				return 1;
			}
		}
		bpf_map__set_inner_map_fd(skel->maps.rings, ring_fds[0]);
	}
	if (!skel || floor_bpf__load(skel)) {
		fprintf(stderr, "floor: load failed: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; ring_mode && i < ncpu; i++) {
		__u32 key = i;
		int failed = bpf_map_update_elem(bpf_map__fd(skel->maps.rings), &key, &ring_fds[i], BPF_ANY);
		if (!failed && !reader)
			failed = !(reader = ring_buffer__new(ring_fds[i], count_record, &records, NULL));
		else if (!failed)
			failed = ring_buffer__add(reader, ring_fds[i], count_record, &records);
		if (failed) {
			fprintf(stderr, "floor: ring buffer of CPU %d: %s\n", i, strerror(errno));
			return 1;
		}
	}

	LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = false);
	struct bpf_link *link = bpf_program__attach_uprobe_opts(
		ring_mode ? skel->progs.record_hit : skel->progs.count_hit, -1, argv[1], (size_t)off, &opts);
	if (!link) {
		fprintf(stderr, "floor: attach %s+%#llx failed: %s\n", argv[1], off,
			strerror(errno));
		floor_bpf__destroy(skel);
		return 1;
	}
	// "pair": also a uretprobe at the same site, the floor of entry + return.
	struct bpf_link *ret_link = NULL;
	if (argc > 3 && strcmp(argv[3], "pair") == 0) {
		LIBBPF_OPTS(bpf_uprobe_opts, ret_opts, .retprobe = true);
		ret_link = bpf_program__attach_uprobe_opts(skel->progs.count_return, -1, argv[1],
							   (size_t)off, &ret_opts);
		if (!ret_link) {
			fprintf(stderr, "floor: attach return %s+%#llx failed: %s\n", argv[1], off,
				strerror(errno));
			bpf_link__destroy(link);
			floor_bpf__destroy(skel);
			return 1;
		}
	}
	printf("attached %s+%#llx\n", argv[1], off);
	fflush(stdout);

	if (ring_mode) {
		// Poll every 5 ms (the records wake no one), until a stop signal.
		struct timespec now = { 0, 0 };
		while (sigtimedwait(&stop, NULL, &now) < 0) {
			ring_buffer__poll(reader, 5);
			ring_buffer__consume(reader);
		}
		ring_buffer__consume(reader);
		printf("hits=%llu\n", records);
		bpf_link__destroy(link);
		ring_buffer__free(reader);
		floor_bpf__destroy(skel);
		return 0;
	}

	int sig;
	sigwait(&stop, &sig);

	unsigned long long *vals = calloc(ncpu, sizeof(*vals)), sum = 0;
	__u32 key = 0;
	if (!vals || bpf_map_lookup_elem(bpf_map__fd(skel->maps.hits), &key, vals)) {
		fprintf(stderr, "floor: read counter failed: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 0; i < ncpu; i++)
		sum += vals[i];
	printf("hits=%llu\n", sum);

	free(vals);
	bpf_link__destroy(ret_link);
	bpf_link__destroy(link);
	floor_bpf__destroy(skel);
	return 0;
}
