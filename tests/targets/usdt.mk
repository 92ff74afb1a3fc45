# The USDT target (sys/sdt.h from systemtap-sdt-dev, installed by make deps).
TARGETS_OUT ?= .build/targets
TARGETS_SRC_USDT := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

targets: $(TARGETS_OUT)/usdt

$(TARGETS_OUT)/usdt: $(TARGETS_SRC_USDT)/usdt.c | $(TARGETS_OUT)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<
