# Benchmark harness; included from the top Makefile (paths are relative to the
# repository root). The top Makefile is expected to build utap in release
# first, e.g. `bench: release`; without a utap binary the utap rows are "n/a".
#
#   sudo make bench                   full run, updates BENCHMARKS.md
#   sudo make bench BENCH_CALLS=200000 BENCH_ROUNDS=1 \
#        BENCH_PTRACE_CALLS=20000 BENCH_SLOW_CALLS=2000  quick look
# (run.sh documents the other BENCH_* knobs.)

BENCH_SRC   := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_OUT   ?= .build/bench
UTAP        ?= .build/release/utap
BENCH_CLANG ?= clang-14
BPFTOOL     ?= bpftool

# The target must start endbr64; push %rbp. clang keeps the frame in a leaf
# function with -fno-omit-frame-pointer; GCC 12 does not (run.sh checks).
BENCH_LOOP_CFLAGS := -O2 -fcf-protection=full -fno-omit-frame-pointer -Wall -Wextra -pthread

.PHONY: bench bench-build bench-bpftrace bench-ptrace-tools

# BENCH_* knobs given on the make command line reach run.sh through the
# environment (make exports command-line variables).
bench: bench-bpftrace bench-ptrace-tools bench-build
	UTAP='$(UTAP)' LOOP='$(BENCH_OUT)/loop' FLOOR='$(BENCH_OUT)/floor' \
		BENCH_LOGS='$(BENCH_OUT)/logs' bash $(BENCH_SRC)/run.sh

bench-build: $(BENCH_OUT)/loop $(BENCH_OUT)/floor

# Debian's bpftrace; apt lists may be missing on a fresh VM, hence the retry.
bench-bpftrace:
	@command -v bpftrace >/dev/null || { \
		echo "bench: installing bpftrace"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y bpftrace || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y bpftrace; }; }

# Debian's ltrace and gdb, the ptrace tracers utap's ptrace backend is compared with,
# and GNU time, which measures each tracer's peak RSS.
bench-ptrace-tools:
	@missing=; for t in ltrace gdb; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -x /usr/bin/time ] || missing="$$missing time"; \
	[ -z "$$missing" ] || { \
		echo "bench: installing$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; }

$(BENCH_OUT)/loop: $(BENCH_SRC)/loop.c
	@mkdir -p $(@D)
	$(BENCH_CLANG) $(BENCH_LOOP_CFLAGS) -o $@ $<

$(BENCH_OUT)/floor.bpf.o: $(BENCH_SRC)/floor.bpf.c
	@mkdir -p $(@D)
	$(BENCH_CLANG) -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -Wall -c $< -o $@

$(BENCH_OUT)/floor.skel.h: $(BENCH_OUT)/floor.bpf.o
	$(BPFTOOL) gen skeleton $< name floor_bpf > $@.tmp && mv $@.tmp $@

$(BENCH_OUT)/floor: $(BENCH_SRC)/floor.c $(BENCH_OUT)/floor.skel.h
	$(CC) -O2 -Wall -Wextra -I$(BENCH_OUT) -o $@ $< -lbpf
