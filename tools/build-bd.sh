#!/usr/bin/env bash
# Build the real bd (beads CLI) at the version the production image ships, from the Go
# module proxy, into a cache outside the repo; reuse it while `bd version` still matches.
#
#   tools/build-bd.sh            # prints the path of the binary on stdout
#   TOOLS_CACHE=/dir tools/build-bd.sh
#
# CGO on, with -tags gms_pure_go: embedded Dolt needs CGO, and the tag drops the ICU
# dependency, as upstream builds it. Takes ~3 minutes on 2 cores the first time.
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TOOLS_CACHE:-$HOME/.cache/beads-autodispatch/bin}
BD_VERSION=1.0.2
BIN="$CACHE/bd-$BD_VERSION"

log() { printf '[build-bd] %s\n' "$*" >&2; }

version_ok() {
  # Capture first: `grep -q` closing the pipe early would fail the check under pipefail.
  local reported
  [[ -x $1 ]] && reported=$("$1" version 2>/dev/null) && [[ $reported == "bd version $BD_VERSION"[[:space:]]* ]]
}

if version_ok "$BIN"; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go not found on PATH"; exit 1; }
command -v gcc >/dev/null || { log "gcc not found (embedded Dolt needs CGO)"; exit 1; }
mkdir -p "$CACHE"
log "building bd $BD_VERSION into $BIN (first time only)"
start=$(date +%s)
(
  cd "$TOOLS_DIR/bd"
  GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=1 \
    go build -tags gms_pure_go -trimpath \
    -o "$BIN.tmp" github.com/steveyegge/beads/cmd/bd
)
mv "$BIN.tmp" "$BIN"
if ! version_ok "$BIN"; then
  log "built binary reports '$("$BIN" version 2>&1 | head -1)', expected bd version $BD_VERSION"
  exit 1
fi
log "built in $(( $(date +%s) - start ))s"
echo "$BIN"
