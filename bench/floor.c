// floor BINARY FILE_OFFSET
//
// Attaches floor.bpf.c's counter as a uprobe (perf_event, all processes) at
// FILE_OFFSET bytes into BINARY, prints "attached", waits for SIGINT/SIGTERM,
// then prints "hits=<n>" (sum over CPUs).
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "floor.skel.h"

int main(int argc, char **argv)
{
	if (argc != 3 && !(argc == 4 && strcmp(argv[3], "pair") == 0)) {
		fprintf(stderr, "usage: %s BINARY FILE_OFFSET [pair]\n", argv[0]);
		return 2;
	}
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

	struct floor_bpf *skel = floor_bpf__open_and_load();
	if (!skel) {
		fprintf(stderr, "floor: load failed: %s\n", strerror(errno));
		return 1;
	}

	LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = false);
	struct bpf_link *link = bpf_program__attach_uprobe_opts(
		skel->progs.count_hit, -1, argv[1], (size_t)off, &opts);
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

	int sig;
	sigwait(&stop, &sig);

	int ncpu = libbpf_num_possible_cpus();
	if (ncpu < 1) {
		fprintf(stderr, "floor: cannot count CPUs\n");
		return 1;
	}
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
