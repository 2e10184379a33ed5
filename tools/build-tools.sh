#!/usr/bin/env bash
# Build every Go tool a target needs, side by side, into $TOOLS_CACHE (each build script
# reuses what is already there at its pinned version, so a cached run takes seconds).
#
#   tools/build-tools.sh demo   # bd 1.0.2, the Pulumi CLI and its Kubernetes provider
#   tools/build-tools.sh test   # the same, plus dolt 1.84.0, promtool and the Kubernetes control plane
#
# Two Go builds share the cores better than one (each link step runs on one core), so all
# start at once; bd and dolt yield the cores (nice 4) to the longest builds, the provider
# and the control plane. Exits non-zero if any build failed; their logs go to stderr.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
  demo) with_test_tools=false ;;
  test) with_test_tools=true ;;
  *) echo "usage: tools/build-tools.sh demo|test" >&2; exit 2 ;;
esac

pids=()
TOOLS_NICE=4 tools/build-bd.sh >/dev/null & pids+=($!)
if $with_test_tools; then
  TOOLS_NICE=4 tools/build-go-tool.sh dolt >/dev/null & pids+=($!)
  TOOLS_NICE=4 tools/build-go-tool.sh promtool >/dev/null & pids+=($!)
  tools/build-kube.sh >/dev/null & pids+=($!)
fi
tools/build-pulumi.sh >/dev/null & pids+=($!)

failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
exit "$failed"
