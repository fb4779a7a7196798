# Full frames against delta frames over an emulated mobile link (issue 14): two network
# namespaces, the streamer in one and the clients in the other, joined by a 2G-like and then a
# 3G-like link (tc netem when the kernel has it, else bench/linkemu.py over TUN devices).
#   make bench-link                      both profiles, both modes (~20 minutes), as root
#   make bench-link LINK_ARGS=--quick    fewer taps, shorter windows
# Prints the table and writes bench/out/link.{json,md}; removes every namespace, link and
# process it made, also on Ctrl-C.

.PHONY: bench-link

LINK_DIR ?= build/link
LINK_ARGS ?=

bench-link: setup
	$(MAKE) -C clients/c DELTA=1 OUT=$(abspath $(LINK_DIR)) EXTRA_CFLAGS=-Werror
	$(PY) bench/link.py --c-client $(LINK_DIR)/jiomosa-client $(LINK_ARGS)
