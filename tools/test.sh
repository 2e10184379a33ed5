#!/usr/bin/env bash
# The whole suite, as `make test` runs it (the tools already built by build-tools.sh test):
# the xdist run of everything but the cluster suite, and beside it the cluster suite (in a
# process of its own: it mostly waits on real minutes, against one control plane) and
# lint + manifest scan. Their reports follow the xdist run's; exits non-zero if any failed.
#
#   PY=.venv/bin/python TEST_WORKERS=3 tools/test.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
TEST_WORKERS=${TEST_WORKERS:-$(( $(nproc) + 1 ))}
mkdir -p build

BD_REAL="$(tools/build-bd.sh)" || exit 1
export BD_REAL
PROMTOOL="$(tools/build-go-tool.sh promtool)" || exit 1
export PROMTOOL
make --no-print-directory lint scan >build/lint-scan.log 2>&1 & checks=$!
"$PY" -m pytest tests/cluster >build/cluster-tests.log 2>&1 & cluster=$!
"$PY" -m pytest -n "$TEST_WORKERS" --ignore=tests/cluster; rest=$?
wait "$cluster"; clusters=$?
echo "== tests/cluster (build/cluster-tests.log)"
cat build/cluster-tests.log
wait "$checks"; lint=$?
echo "== make lint scan (build/lint-scan.log)"
cat build/lint-scan.log
exit $(( rest || clusters || lint ))
