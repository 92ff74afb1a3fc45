# tests/targets/ptrace/ptrace.mk - target programs for the ptrace breakpoint engine.
#
# Included from the top-level Makefile, or standalone (from the repo root):
#     make -f tests/targets/ptrace/ptrace.mk ptrace-targets
# Everything is built into $(TARGETS_OUT)/ptrace (TARGETS_OUT defaults to .build/targets).
# See tests/targets/ptrace/README.md for what each program does and the hits to expect.

# Directory of this fragment (relative to the directory make runs in).
PTRACE_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

TARGETS_OUT ?= .build/targets
PTRACE_OUT  := $(TARGETS_OUT)/ptrace
PTRACE_CC   ?= $(CC)
PTRACE_WARN ?= -std=gnu11 -Wall -Wextra

# Rebuild when the shared header or this fragment changes.
PTRACE_DEPS := $(PTRACE_SRC)/../common.h $(PTRACE_SRC)/ptrace.mk

# zoo: no endbr64, so each zoo_* function's first instruction is the one under test.
PTRACE_FLAGS_zoo      := -O2 -g -fcf-protection=none
# loop: probe_me starts with endbr64.
PTRACE_FLAGS_loop     := -O2 -g -pthread -fcf-protection=full
PTRACE_FLAGS_default  := -O2 -g -pthread
PTRACE_LIBS_dlhost    := -ldl

PTRACE_SIMPLE := signals forkexec returns dlhost coroutines

PTRACE_BINS := \
	$(PTRACE_OUT)/zoo \
	$(PTRACE_OUT)/loop \
	$(PTRACE_OUT)/libdlprobe.so \
	$(addprefix $(PTRACE_OUT)/,$(PTRACE_SIMPLE))

.PHONY: ptrace-targets ptrace-targets-clean targets
ptrace-targets: $(PTRACE_BINS)
targets: ptrace-targets

ptrace-targets-clean:
	rm -rf $(PTRACE_OUT)

$(PTRACE_OUT):
	mkdir -p $@

$(PTRACE_OUT)/zoo: $(PTRACE_SRC)/zoo_main.c $(PTRACE_SRC)/zoo.S $(PTRACE_DEPS) | $(PTRACE_OUT)
	$(PTRACE_CC) $(PTRACE_WARN) $(PTRACE_FLAGS_zoo) -o $@ $(PTRACE_SRC)/zoo_main.c $(PTRACE_SRC)/zoo.S

$(PTRACE_OUT)/loop: $(PTRACE_SRC)/loop.c $(PTRACE_DEPS) | $(PTRACE_OUT)
	$(PTRACE_CC) $(PTRACE_WARN) $(PTRACE_FLAGS_loop) -o $@ $<

$(PTRACE_OUT)/libdlprobe.so: $(PTRACE_SRC)/libdlprobe.c $(PTRACE_DEPS) | $(PTRACE_OUT)
	$(PTRACE_CC) $(PTRACE_WARN) $(PTRACE_FLAGS_default) -fPIC -shared -o $@ $<

# dlhost finds libdlprobe.so next to itself at run time; it does not link against it.
$(PTRACE_OUT)/dlhost: $(PTRACE_OUT)/libdlprobe.so

$(addprefix $(PTRACE_OUT)/,$(PTRACE_SIMPLE)): \
		$(PTRACE_OUT)/%: $(PTRACE_SRC)/%.c $(PTRACE_DEPS) | $(PTRACE_OUT)
	$(PTRACE_CC) $(PTRACE_WARN) $(PTRACE_FLAGS_default) -o $@ $< $(PTRACE_LIBS_$*)
