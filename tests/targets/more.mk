# Targets beyond targets.mk: USDT (sys/sdt.h from systemtap-sdt-dev, installed by make
# deps) and C++ exceptions.
TARGETS_OUT ?= .build/targets
TARGETS_SRC_MORE := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

targets: $(TARGETS_OUT)/usdt

$(TARGETS_OUT)/usdt: $(TARGETS_SRC_MORE)/usdt.c | $(TARGETS_OUT)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<

# C++ exceptions through return-probed frames (--return-mode).
targets: $(TARGETS_OUT)/exceptions

$(TARGETS_OUT)/exceptions: $(TARGETS_SRC_MORE)/exceptions.cpp | $(TARGETS_OUT)
	$(CXX) -O2 -g -fno-omit-frame-pointer -Wall -Wextra -o $@ $<
