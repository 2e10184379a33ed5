# Entry points; see README.md. Everything installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TOOLS_CACHE ?= $(HOME)/.cache/beads-autodispatch/bin
# pytest-xdist workers: one more than the cores, since a worker often waits (on a job process,
# a lock, a poll interval) while its bd processes are not running. On 2 cores, .ci/run took
# 13 min 5 s with 2 workers and 11 min 49 s with 3.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

.PHONY: setup tools test-tools test lint scan demo bench cluster clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Real bd 1.0.2, the pulumi CLI and its Kubernetes provider plugin, built from Go modules
# into $(TOOLS_CACHE) (the plugin is then installed into ~/.pulumi/plugins); cached.
# Each target builds only what it needs, all at once (two Go builds share the cores better
# than one: each link step runs on one core); a tool already installed at its pinned version
# is used instead of built. `make tools`: bd + the Pulumi CLI and provider (the demo's).
# bd and dolt yield the cores to the two longest builds, the provider and the control plane.
tools:
	TOOLS_NICE=4 tools/build-bd.sh >/dev/null & bd=$$!; tools/build-pulumi.sh >/dev/null; \
	  pulumi=$$?; wait $$bd && exit $$pulumi

# The tests also run dolt sql-server (server mode) and a Kubernetes control plane.
test-tools:
	TOOLS_NICE=4 tools/build-go-tool.sh dolt >/dev/null & dolt=$$!; tools/build-kube.sh >/dev/null & kube=$$!; \
	  $(MAKE) --no-print-directory tools; rest=$$?; wait $$dolt && wait $$kube && exit $$rest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# checkov over the rendered manifests (its own venv in the tools cache); zero findings.
scan: setup
	PYTHON=$(PY) tools/scan-manifests.sh

test: setup test-tools
	@mkdir -p build
	@# Lint and scan, and the cluster suite (which mostly waits on real minutes, in a process
	@# of its own: one control plane), run beside the xdist run; their reports follow its.
	export BD_REAL="$$(tools/build-bd.sh)"; \
	  $(MAKE) --no-print-directory lint scan >build/lint-scan.log 2>&1 & checks=$$!; \
	  $(PY) -m pytest tests/cluster >build/cluster-tests.log 2>&1 & cluster=$$!; \
	  $(PY) -m pytest -n $(TEST_WORKERS) --ignore=tests/cluster; rest=$$?; \
	  wait $$cluster; clusters=$$?; echo "== tests/cluster (build/cluster-tests.log)"; \
	  cat build/cluster-tests.log; \
	  wait $$checks; lint=$$?; echo "== make lint scan (build/lint-scan.log)"; \
	  cat build/lint-scan.log; exit $$(( rest || clusters || lint ))

# pulumi up of the `local` stack (renders YAML), then its CronJobs' containers run locally.
demo: setup tools
	BD_REAL="$$(tools/build-bd.sh)" PULUMI_BIN="$$(tools/build-pulumi.sh 2>/dev/null)" \
	  $(PY) -m devtools.demo

# Original configuration vs ours, real bd, loopback agent; prints tables (a few minutes).
bench: setup tools
	$(PY) -m devtools.bench --bd "$$(tools/build-bd.sh)"

# A Kubernetes control plane on loopback in .localcluster/ until Ctrl-C (no kubelet; run
# `$(PY) -m devtools.pods` beside it to run pods).
cluster: setup
	$(PY) -m devtools.localcluster

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
