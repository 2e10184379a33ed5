# Entry points; see README.md. Everything installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TOOLS_CACHE ?= $(HOME)/.cache/beads-autodispatch/bin

.PHONY: setup tools test lint unit demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Real bd 1.0.2 (and the Pulumi toolchain) built from Go modules into $(TOOLS_CACHE).
tools:
	tools/build-bd.sh >/dev/null

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: setup tools lint
	BD_REAL="$$(tools/build-bd.sh)" $(PY) -m pytest

demo: setup tools
	BD_REAL="$$(tools/build-bd.sh)" $(PY) -m tests.demo

# Original configuration vs ours, real bd, loopback agent; prints tables (a few minutes).
bench: setup tools
	$(PY) -m tests.bench.bench --bd "$$(tools/build-bd.sh)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
