# fuzz/fuzz.mk - libFuzzer harnesses over utap's parsers of untrusted bytes (RELIABILITY.md).
#
#     make fuzz                                   every harness for FUZZ_SECONDS (60) each, in turn
#     make fuzz FUZZ_HARNESSES=ProbeSpec FUZZ_SECONDS=600
#     make fuzz FUZZ_RUNS=10000000 FUZZ_SECONDS=5400   up to 10 million runs each (the campaign)
#     make fuzz-build                             only build .build-fuzz/harnesses/NAME
#     SWIFT_BACKTRACE=enable=no .build-fuzz/harnesses/NAME CRASH_FILE   rerun one input
#
# SwiftPM builds the library modules with coverage instrumentation and AddressSanitizer
# into their own scratch path; swiftc then links each harness (fuzz/Harnesses/NAME.swift
# plus fuzz/Support.swift) against their objects. Harnesses are not SwiftPM targets:
# libFuzzer supplies main, so a plain `swift build` could not link them.
#
# Inputs libFuzzer finds go to .build-fuzz/corpus/NAME (fuzz/corpus/NAME, the committed
# seeds, is only read), crashes to .build-fuzz/crashes/NAME/, the full log to
# .build-fuzz/logs/NAME.log. A crash, a hang (FUZZ_TIMEOUT seconds on one input) or a
# failed invariant fails the target.

FUZZ_HARNESSES ?= ProbeSpec ELFImage SDTNotes ProcMaps Instruction RecordDecoder
FUZZ_SECONDS ?= 60
# Runs per harness at most (-1: no limit but FUZZ_SECONDS).
FUZZ_RUNS ?= -1
FUZZ_TIMEOUT ?= 10
# Per harness: its dictionary, and input sizes that keep runs fast (maps lines are
# independent; ELF seeds are a few KB).
FUZZ_FLAGS_ProbeSpec := -dict=fuzz/dict/ProbeSpec.dict -max_len=256
FUZZ_FLAGS_ELFImage := -max_len=4096
FUZZ_FLAGS_SDTNotes := -dict=fuzz/dict/SDTNotes.dict -max_len=4096
FUZZ_FLAGS_ProcMaps := -max_len=512
FUZZ_FLAGS_Instruction := -max_len=64
FUZZ_FLAGS_RecordDecoder := -max_len=1024
# Fuzzing takes a whole CPU: stay behind interactive work and builds.
FUZZ_NICE ?= nice -n 10
FUZZ_SCRATCH := .build-fuzz
# Optimized (several times the runs per second of a debug build), with testability for
# the harnesses that reach internal API. -O keeps Swift's overflow and bounds checks;
# AddressSanitizer stands in for the unsafe-pointer checks only debug builds make.
FUZZ_MODULES_DIR := $(FUZZ_SCRATCH)/release
# UtapBPF pulls in UtapCore and the C targets; its objects and theirs are linked into
# every harness.
FUZZ_OBJECT_DIRS := $(addprefix $(FUZZ_MODULES_DIR)/,UtapCore.build UtapBPF.build CUtapSys.build UtapABI.build UtapBPFObject.build)
FUZZ_MODULE_MAPS := $(addprefix $(FUZZ_MODULES_DIR)/,CUtapSys.build UtapABI.build UtapBPFObject.build) \
	Sources/CLibbpf Sources/CZydis
FUZZ_SWIFTC ?= swiftc
FUZZ_SWIFTC_FLAGS := -O -sanitize=fuzzer,address -parse-as-library -g -use-ld=lld -I $(FUZZ_MODULES_DIR)/Modules \
	$(foreach dir,$(FUZZ_MODULE_MAPS),-Xcc -fmodule-map-file=$(dir)/module.modulemap) -lstdc++

.PHONY: fuzz fuzz-build
fuzz-build: deps
	$(SWIFT) build -c release --scratch-path $(FUZZ_SCRATCH) --sanitize=fuzzer --sanitize=address \
		-Xswiftc -enable-testing --target UtapBPF
	@mkdir -p $(FUZZ_SCRATCH)/harnesses
	@for h in $(FUZZ_HARNESSES); do \
		echo "swiftc fuzz/Harnesses/$$h.swift -> $(FUZZ_SCRATCH)/harnesses/$$h"; \
		$(FUZZ_SWIFTC) $(FUZZ_SWIFTC_FLAGS) -module-name $${h}Fuzz fuzz/Support.swift fuzz/Harnesses/$$h.swift \
			$(foreach dir,$(FUZZ_OBJECT_DIRS),$(dir)/*.o) -o $(FUZZ_SCRATCH)/harnesses/$$h || exit 1; \
	done

# One harness at a time, each over its committed seeds and the inputs of past runs, plus
# the inputs of fixed crashes (fuzz/regressions/NAME); prints libFuzzer's final numbers.
# SWIFT_BACKTRACE: a Swift trap goes straight to libFuzzer's crash handler (the runtime's
# backtracer reads memory in a way AddressSanitizer reports as a second, bogus error).
define fuzz_one
	@mkdir -p $(FUZZ_SCRATCH)/corpus/$(1) $(FUZZ_SCRATCH)/crashes/$(1) $(FUZZ_SCRATCH)/logs
	@echo "== fuzz $(1): at most $(FUZZ_SECONDS)s$(if $(filter -1,$(FUZZ_RUNS)),, and $(FUZZ_RUNS) runs)"
	@SWIFT_BACKTRACE=enable=no $(FUZZ_NICE) $(FUZZ_SCRATCH)/harnesses/$(1) -max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -timeout=$(FUZZ_TIMEOUT) \
		-print_final_stats=1 -artifact_prefix=$(FUZZ_SCRATCH)/crashes/$(1)/ $(FUZZ_FLAGS_$(1)) \
		$(FUZZ_SCRATCH)/corpus/$(1) fuzz/corpus/$(1) $(wildcard fuzz/regressions/$(1)) \
		> $(FUZZ_SCRATCH)/logs/$(1).log 2>&1 || \
		{ tail -40 $(FUZZ_SCRATCH)/logs/$(1).log; \
		  echo "make fuzz: $(1) failed; the input is in $(FUZZ_SCRATCH)/crashes/$(1)/" >&2; exit 1; }
	@grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units' $(FUZZ_SCRATCH)/logs/$(1).log

endef

fuzz: fuzz-build
	$(foreach h,$(FUZZ_HARNESSES),$(call fuzz_one,$(h)))
