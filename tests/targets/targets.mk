# tests/targets/targets.mk - C target programs for utap integration tests.
#
# Included from the top-level Makefile, or standalone (from the repo root):
#     make -f tests/targets/targets.mk targets
# Everything is built into $(TARGETS_OUT) (default .build/targets).
# See tests/targets/README.md for what each program does.

# Directory of this fragment (relative to the directory make runs in).
TARGETS_SRC := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

TARGETS_OUT   ?= .build/targets
TARGETS_CC    ?= cc
TARGETS_CLANG ?= clang-14
TARGETS_STRIP ?= strip
TARGETS_WARN  ?= -std=gnu11 -Wall -Wextra

TARGETS_HDR := $(TARGETS_SRC)/common.h
# Rebuild when the shared header or this fragment changes.
TARGETS_DEPS := $(TARGETS_HDR) $(TARGETS_SRC)/targets.mk

TARGETS_FLAGS_args_pie    := -O2 -g -fPIE -pie -fcf-protection=full -fno-omit-frame-pointer
TARGETS_FLAGS_args_nopie  := -O2 -fno-pie -no-pie -fcf-protection=none
TARGETS_FLAGS_args_stripped := $(TARGETS_FLAGS_args_pie) -rdynamic
TARGETS_FLAGS_args_O0     := -O0 -fcf-protection=none
TARGETS_FLAGS_args_clang  := -O2 -fcf-protection=full
TARGETS_FLAGS_threads     := -O2 -g -pthread -fcf-protection=full
TARGETS_FLAGS_default     := -O2 -g
# fib keeps frame pointers: --stack tests walk its recursion (the kernel unwinds by them).
TARGETS_FLAGS_fib         := -O2 -g -fno-omit-frame-pointer
# demo too, so 'make demo' shows --stack-ready code whose functions start with push %rbp,
# which the kernel emulates: the latencies it prints are the function's, not a
# single-step's (see 'utap list -v').
TARGETS_FLAGS_demo        := -O2 -g -fno-omit-frame-pointer

TARGETS_SIMPLE := sleeper demo fib forever rename_me

TARGETS_BINS := \
	$(TARGETS_OUT)/args_pie \
	$(TARGETS_OUT)/args_nopie \
	$(TARGETS_OUT)/args_stripped \
	$(TARGETS_OUT)/args_debuglink \
	$(TARGETS_OUT)/args_minidebuginfo \
	$(TARGETS_OUT)/args_O0 \
	$(TARGETS_OUT)/args_clang \
	$(TARGETS_OUT)/threads \
	$(TARGETS_OUT)/migrate \
	$(TARGETS_OUT)/libutaptest.so.1 \
	$(TARGETS_OUT)/libutaptest.so \
	$(TARGETS_OUT)/uselib \
	$(addprefix $(TARGETS_OUT)/,$(TARGETS_SIMPLE))

.PHONY: targets targets-clean
targets: $(TARGETS_BINS)

targets-clean:
	rm -rf $(TARGETS_OUT)

$(TARGETS_OUT) $(TARGETS_OUT)/tmp:
	mkdir -p $@

# --- args.c, five variants -------------------------------------------------

$(TARGETS_OUT)/args_pie $(TARGETS_OUT)/args_nopie $(TARGETS_OUT)/args_O0: \
		$(TARGETS_OUT)/args_%: $(TARGETS_SRC)/args.c $(TARGETS_DEPS) | $(TARGETS_OUT)
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_args_$*) -o $@ $<

# Full (unstripped) build kept in tmp/, then stripped: only .dynsym remains.
$(TARGETS_OUT)/tmp/args_stripped.full: $(TARGETS_SRC)/args.c $(TARGETS_DEPS) | $(TARGETS_OUT)/tmp
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_args_stripped) -o $@ $<

$(TARGETS_OUT)/args_stripped: $(TARGETS_OUT)/tmp/args_stripped.full | $(TARGETS_OUT)
	$(TARGETS_STRIP) --strip-all -o $@ $<

# Stripped of everything, add2 included (no -rdynamic), its symbols in a separate debug
# file found through .gnu_debuglink in .debug/ beside it, as distro debug packages do.
$(TARGETS_OUT)/args_debuglink: $(TARGETS_SRC)/args.c $(TARGETS_DEPS) | $(TARGETS_OUT)/tmp
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_args_pie) -o $(TARGETS_OUT)/tmp/args_debuglink.full $<
	mkdir -p $(TARGETS_OUT)/.debug
	objcopy --only-keep-debug $(TARGETS_OUT)/tmp/args_debuglink.full $(TARGETS_OUT)/.debug/args_debuglink.debug
	$(TARGETS_STRIP) --strip-all -o $@ $(TARGETS_OUT)/tmp/args_debuglink.full
	objcopy --add-gnu-debuglink=$(TARGETS_OUT)/.debug/args_debuglink.debug $@

# Stripped of everything, with the function symbols .dynsym lacks in .gnu_debugdata: an
# xz-compressed ELF of symbols only (MiniDebugInfo), as Fedora's find-debuginfo makes it.
ARGS_MDI := $(TARGETS_OUT)/tmp/args_minidebuginfo
$(TARGETS_OUT)/args_minidebuginfo: $(TARGETS_SRC)/args.c $(TARGETS_DEPS) | $(TARGETS_OUT)/tmp
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_args_pie) -o $(ARGS_MDI).full $<
	nm --defined-only --format=posix $(ARGS_MDI).full | awk '$$2 ~ /^[Tt]$$/ { print $$1 }' | sort -u > $(ARGS_MDI).functions
	nm -D --defined-only --format=posix $(ARGS_MDI).full | awk '{ print $$1 }' | sort -u > $(ARGS_MDI).dynamic
	comm -23 $(ARGS_MDI).functions $(ARGS_MDI).dynamic > $(ARGS_MDI).keep
	objcopy --only-keep-debug $(ARGS_MDI).full $(ARGS_MDI).mini
	objcopy -S --remove-section .comment --keep-symbols=$(ARGS_MDI).keep $(ARGS_MDI).mini
	xz -f $(ARGS_MDI).mini
	$(TARGETS_STRIP) --strip-all -o $@ $(ARGS_MDI).full
	objcopy --add-section .gnu_debugdata=$(ARGS_MDI).mini.xz $@

$(TARGETS_OUT)/args_clang: $(TARGETS_SRC)/args.c $(TARGETS_DEPS) | $(TARGETS_OUT)
	@command -v $(TARGETS_CLANG) >/dev/null 2>&1 || { \
	  echo "error: $(TARGETS_CLANG) not found; it is needed for $@ (install it with 'make deps')" >&2; \
	  exit 1; }
	$(TARGETS_CLANG) $(TARGETS_WARN) $(TARGETS_FLAGS_args_clang) -o $@ $<

# --- threads -----------------------------------------------------------------

$(TARGETS_OUT)/threads: $(TARGETS_SRC)/threads.c $(TARGETS_DEPS) | $(TARGETS_OUT)
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_threads) -o $@ $<

$(TARGETS_OUT)/migrate: $(TARGETS_SRC)/migrate.c $(TARGETS_DEPS) | $(TARGETS_OUT)
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_threads) -o $@ $<

# --- shared library + user ---------------------------------------------------

$(TARGETS_OUT)/libutaptest.so.1: $(TARGETS_SRC)/libutaptest.c $(TARGETS_DEPS) | $(TARGETS_OUT)
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_default) -fPIC -shared \
		-Wl,-soname,libutaptest.so.1 -o $@ $<

$(TARGETS_OUT)/libutaptest.so: | $(TARGETS_OUT)/libutaptest.so.1
	ln -sfn libutaptest.so.1 $@

$(TARGETS_OUT)/uselib: $(TARGETS_SRC)/uselib.c $(TARGETS_DEPS) \
		$(TARGETS_OUT)/libutaptest.so.1 | $(TARGETS_OUT)/libutaptest.so
	$(TARGETS_CC) $(TARGETS_WARN) $(TARGETS_FLAGS_default) -o $@ $< \
		-L$(TARGETS_OUT) -lutaptest -Wl,-rpath,'$$ORIGIN'

# --- simple single-file programs --------------------------------------------

$(addprefix $(TARGETS_OUT)/,$(TARGETS_SIMPLE)): \
		$(TARGETS_OUT)/%: $(TARGETS_SRC)/%.c $(TARGETS_DEPS) | $(TARGETS_OUT)
	$(TARGETS_CC) $(TARGETS_WARN) $(or $(TARGETS_FLAGS_$*),$(TARGETS_FLAGS_default)) -o $@ $<

# --- demangling: C++, Rust (v0 and legacy mangling) and Swift -------------------

TARGETS_CXX    ?= $(CXX)
# rustup installs rustc under ~/.cargo/bin, which a non-login shell may lack on PATH.
TARGETS_RUSTC  ?= $(or $(shell command -v rustc 2>/dev/null),$(wildcard $(HOME)/.cargo/bin/rustc),rustc)
TARGETS_SWIFTC ?= swiftc
TARGETS_RUSTFLAGS := -C opt-level=2 -C force-frame-pointers=yes -C strip=debuginfo

TARGETS_DEMANGLE := \
	$(TARGETS_OUT)/demangle_cxx \
	$(TARGETS_OUT)/demangle_rs_v0 \
	$(TARGETS_OUT)/demangle_rs_legacy \
	$(TARGETS_OUT)/demangle_swift

targets: $(TARGETS_DEMANGLE)

$(TARGETS_OUT)/demangle_cxx: $(TARGETS_SRC)/demangle_cxx.cpp $(TARGETS_DEPS) | $(TARGETS_OUT)
	$(TARGETS_CXX) -std=gnu++17 -Wall -Wextra -O2 -g -fno-omit-frame-pointer -fcf-protection=full -o $@ $<

$(TARGETS_OUT)/demangle_rs_v0: $(TARGETS_SRC)/demangle_rs.rs $(TARGETS_SRC)/targets.mk | $(TARGETS_OUT)
	$(TARGETS_RUSTC) $(TARGETS_RUSTFLAGS) -C symbol-mangling-version=v0 -o $@ $<

# rustc's default mangling is legacy (choosing it explicitly needs -Z unstable-options).
$(TARGETS_OUT)/demangle_rs_legacy: $(TARGETS_SRC)/demangle_rs.rs $(TARGETS_SRC)/targets.mk | $(TARGETS_OUT)
	$(TARGETS_RUSTC) $(TARGETS_RUSTFLAGS) -o $@ $<

$(TARGETS_OUT)/demangle_swift: $(TARGETS_SRC)/demangle_swift.swift $(TARGETS_SRC)/targets.mk | $(TARGETS_OUT)
	$(TARGETS_SWIFTC) -O -module-name demangle_swift -o $@ $<
