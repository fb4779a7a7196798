# Fuzzing (issue #10): `make fuzz` runs every fuzz target, outside `make test` (which runs a
# short smoke of each). Included by the Makefile.
#   fuzz-api: schemathesis over docs/openapi.json and hypothesis over the Socket.IO and
#             plain-WebSocket events, >= 10,000 of each against a real streamer
#             (bench/fuzz_api.py; figures in bench/out/fuzz.json).
#   fuzz-c:   the C client's frame parser with libFuzzer (mk/cfuzz.mk).

.PHONY: fuzz fuzz-api

FUZZ_REQUESTS ?= 10000
FUZZ_MESSAGES ?= 10000

fuzz: fuzz-api fuzz-c

fuzz-api: setup
	$(PY) bench/fuzz_api.py --requests $(FUZZ_REQUESTS) --messages $(FUZZ_MESSAGES)
