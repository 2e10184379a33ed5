#!/usr/bin/env bash
# Build dolt (sql-server for bd's server mode) from the Go module proxy, at the commit
# bd 1.0.2 embeds, into the tools cache; reuse it while `dolt version` still matches.
#
#   tools/build-dolt.sh          # prints the path of the binary on stdout
#
# ~3 minutes on 2 cores the first time (it shares most packages with the bd build).
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TOOLS_CACHE:-$HOME/.cache/beads-autodispatch/bin}
DOLT_VERSION=1.84.0
BIN="$CACHE/dolt-$DOLT_VERSION"

log() { printf '[build-dolt] %s\n' "$*" >&2; }

version_ok() {
  # Capture first: `grep -q` closing the pipe early would fail the check under pipefail.
  local reported
  [[ -x $1 ]] && reported=$("$1" version 2>/dev/null) && [[ $reported == "dolt version $DOLT_VERSION"* ]]
}

if version_ok "$BIN"; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go not found on PATH"; exit 1; }
mkdir -p "$CACHE"
log "building dolt $DOLT_VERSION into $BIN (first time only)"
start=$(date +%s)
(
  cd "$TOOLS_DIR/dolt"
  GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=1 \
    go build -tags gms_pure_go -trimpath -o "$BIN.tmp" github.com/dolthub/dolt/go/cmd/dolt
)
mv "$BIN.tmp" "$BIN"
if ! version_ok "$BIN"; then
  log "built binary reports '$("$BIN" version 2>&1 | head -1)', expected dolt version $DOLT_VERSION"
  exit 1
fi
log "built in $(( $(date +%s) - start ))s"
echo "$BIN"
