# Jiomosa: `make run` serves the embedded default, `make test` runs every check.
# Both install what is missing first (Debian packages as root, then a venv).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 0.0.0.0
PORT ?= 5000
APT_PACKAGES := chromium chromium-driver redis-server redis-tools fonts-dejavu-core curl openssl \
	gcc libc6-dev make clang libclang-rt-14-dev iproute2 libjpeg62-turbo-dev libpng-dev
PYTEST_ARGS ?=

.PHONY: setup system-deps venv run test lint bench bench-fleet bench-load clean

setup: system-deps venv

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: setup
	$(VENV)/bin/jiomosa serve --host $(HOST) --port $(PORT)

lint: venv
	$(VENV)/bin/ruff check streamer operator tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The local Kubernetes node (tests/e2e) needs root with full capabilities: elsewhere (an
# unprivileged container) its suite skips with the reason, and nothing of it is built.
CLUSTER_CAPABLE := $(shell python3 tools/cluster/cluster.py check --machine >/dev/null 2>&1 && echo yes)

test: setup lint controlplane $(if $(CLUSTER_CAPABLE),cluster-prereqs)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

bench-fleet: setup
	$(PY) bench/fleet.py

# One streamer with its production abuse limits under 1,000 connections and 200 creates/s.
bench-load: setup
	$(PY) bench/load.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
