#!/usr/bin/env bash
# Render the manifests a deploy would apply (Pulumi mocks: no cluster, no Pulumi CLI) for
# each configuration in devtools/manifests/render.py, and scan each with checkov's Kubernetes
# checks. Exits non-zero on any finding.
#
#   tools/scan-manifests.sh            # PYTHON=<project interpreter> (default .venv/bin/python)
#
# Accepted findings are not configured here: they are annotations on the objects themselves
# (`checkov.io/skipN: CHECK=reason`, built by scan_exceptions() in
# components/auto_dispatch.py, next to the settings they concern), so the reasons travel
# with the manifests and a config that does not produce a finding gets the check for real.
#
# checkov gets its own virtualenv in the tools cache, installed on first use: it pulls ~85
# packages (boto3, aiohttp, numpy…) and pins packaging==23.2, which would downgrade the
# project's environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECKOV_VERSION=3.3.30
CHECKOV_VENV=${CHECKOV_VENV:-$HOME/.cache/beads-autodispatch/checkov-venv}
CHECKOV="$CHECKOV_VENV/bin/checkov"
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

log() { printf '[scan-manifests] %s\n' "$*" >&2; }

if [[ ! -x $CHECKOV ]] || [[ $("$CHECKOV" --version 2>/dev/null) != "$CHECKOV_VERSION" ]]; then
  log "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV (first time only, ~1 minute)"
  python3 -m venv --clear "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

start=$(date +%s)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$ROOT" && "$PYTHON" -m devtools.manifests "$out" >/dev/null)

status=0
for dir in "$out"/*/; do
  config=$(basename "$dir")
  log "checkov: configuration '$config' ($(find "$dir" -name '*.yaml' | wc -l) manifests)"
  # --skip-download: no calls to Prisma Cloud for guidelines; the scan is fully offline.
  if ! "$CHECKOV" --directory "$dir" --framework kubernetes --compact --quiet --skip-download; then
    status=1
  fi
done
log "done in $(($(date +%s) - start))s: $([[ $status == 0 ]] && echo 'no findings' || echo 'FINDINGS above')"
exit "$status"
