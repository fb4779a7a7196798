# Fuzzing of the C reference client's parsers (clients/c/jiomosa_proto.c, jiomosa_delta.c) with clang's
# libFuzzer, AddressSanitizer and UBSan (docs/clients.md, "Fuzzing"). Included by the Makefile.
#   make fuzz-c                        10 minutes of CPU, then executions, exec/s, coverage, crashes
#   make fuzz-c CFUZZ_CPU_SECONDS=60   shorter
# The corpus grows in $(CFUZZ_DIR)/corpus and is reused by the next run; crashing inputs land
# in $(CFUZZ_DIR)/artifacts (add them to clients/c/fuzz/regressions/ once fixed).

.PHONY: fuzz-c fuzz-c-build

CFUZZ_DIR ?= build/cfuzz
CFUZZ_CPU_SECONDS ?= 600

# DELTA=1: the harness also decodes real JPEG and PNG images (libjpeg, libpng) in delta updates.
fuzz-c-build: system-deps
	$(MAKE) -C clients/c fuzz DELTA=1 OUT=$(abspath $(CFUZZ_DIR))

fuzz-c: fuzz-c-build
	python3 clients/c/fuzz/run.py $(CFUZZ_DIR)/fuzz/fuzz-client $(CFUZZ_DIR) $(CFUZZ_CPU_SECONDS)
