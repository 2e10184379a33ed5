# Entry points; see README.md. Everything installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TOOLS_CACHE ?= $(HOME)/.cache/beads-autodispatch/bin
# pulumi finds its home from the passwd entry, not $$HOME: say it, so the plugin the build
# installs is the one every later pulumi run finds.
export PULUMI_HOME ?= $(HOME)/.pulumi
# pytest-xdist workers: one more than the cores, since a worker often waits (on a job process,
# a lock, a poll interval) while its bd processes are not running.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

.PHONY: setup tools test-tools test unit lint scan demo bench cluster clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The Go tools, built from pinned modules into $(TOOLS_CACHE) (cached): tools/build-tools.sh.
tools:
	tools/build-tools.sh demo

test-tools:
	tools/build-tools.sh test

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# checkov over the rendered manifests (its own venv in the tools cache); zero findings.
scan: setup
	PYTHON=$(PY) tools/scan-manifests.sh

# Everything: the xdist run, the cluster suite and lint + scan side by side (docs/testing.md).
test: setup test-tools
	PY=$(PY) TEST_WORKERS=$(TEST_WORKERS) tools/test.sh

# The in-process tests only (no tools needed); times in docs/testing.md.
unit: setup
	$(PY) -m pytest -q -m "not integration" --ignore=tests/cluster -n $(TEST_WORKERS)

# pulumi up of the `local` stack (renders YAML), then its CronJobs' containers run locally.
demo: setup tools
	BD_REAL="$$(tools/build-bd.sh)" PULUMI_BIN="$$(tools/build-pulumi.sh 2>/dev/null)" \
	  $(PY) -m devtools.demo

# Original configuration vs ours, real bd, loopback agent; prints tables (docs/benchmark.md).
bench: setup tools
	$(PY) -m devtools.bench --bd "$$(tools/build-bd.sh)"

# A Kubernetes control plane on loopback in .localcluster/ until Ctrl-C (no kubelet; run
# `$(PY) -m devtools.pods` beside it to run pods).
cluster: setup
	$(PY) -m devtools.localcluster

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
