# Targets beyond targets.mk: USDT (sys/sdt.h from systemtap-sdt-dev, installed by make
# deps), C++ exceptions and Rust panics.
TARGETS_OUT ?= .build/targets
TARGETS_SRC_MORE := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

targets: $(TARGETS_OUT)/usdt

$(TARGETS_OUT)/usdt: $(TARGETS_SRC_MORE)/usdt.c | $(TARGETS_OUT)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<

# C++ exceptions through return-probed frames (--return-mode).
targets: $(TARGETS_OUT)/exceptions

$(TARGETS_OUT)/exceptions: $(TARGETS_SRC_MORE)/exceptions.cpp | $(TARGETS_OUT)
	$(CXX) -O2 -g -fno-omit-frame-pointer -Wall -Wextra -o $@ $<

# Rust panics through return-probed frames (--return-mode auto picks sites for Rust).
targets: $(TARGETS_OUT)/panics

$(TARGETS_OUT)/panics: $(TARGETS_SRC_MORE)/panics.rs | $(TARGETS_OUT)
	$(TARGETS_RUSTC) $(TARGETS_RUSTFLAGS) -o $@ $<

# Functions that open with vector instructions, which the kernel's uprobes mishandle.
# (Naked functions read their parameters in assembly: hence -Wno-unused-parameter.)
targets: $(TARGETS_OUT)/vector

$(TARGETS_OUT)/vector: $(TARGETS_SRC_MORE)/vector.c | $(TARGETS_OUT)
	$(CC) -O1 -fcf-protection=none -Wall -Wextra -Wno-unused-parameter -o $@ $<

# A Go program whose goroutines' stacks grow inside probed functions (Go functions open
# with a stack check; golang-go is installed by make deps).
targets: $(TARGETS_OUT)/gostack

$(TARGETS_OUT)/gostack: $(TARGETS_SRC_MORE)/gostack.go | $(TARGETS_OUT)
	HOME=$(abspath $(TARGETS_OUT)) GOCACHE=$(abspath $(TARGETS_OUT))/go-cache GOPATH=$(abspath $(TARGETS_OUT))/go \
		go build -o $@ $<
