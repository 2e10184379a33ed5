#!/usr/bin/env bash
# Build one of the CGO tools the tests run, from its pinned Go module under tools/<name>/,
# into the tools cache; reuse the binary while `<binary> version` still reports the pin.
#
#   tools/build-go-tool.sh bd      # bd 1.0.2 (beads CLI, embedded Dolt)   ~3-4 min first time
#   tools/build-go-tool.sh dolt    # dolt 1.84.0 (sql-server for server mode) ~3 min first time
#
# Prints the path of the binary on stdout. Knobs: TOOLS_CACHE, TOOLS_BUILD_JOBS (go build -p,
# default: every core), TOOLS_NICE (default 0). CGO on with -tags gms_pure_go, as upstream
# builds them (embedded Dolt needs CGO; the tag drops the ICU dependency).
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TOOLS_CACHE:-$HOME/.cache/beads-autodispatch/bin}

case ${1:-} in
  bd) VERSION=1.0.2 PACKAGE=github.com/steveyegge/beads/cmd/bd ;;
  dolt) VERSION=1.84.0 PACKAGE=github.com/dolthub/dolt/go/cmd/dolt ;;
  *) echo "usage: $0 bd|dolt" >&2; exit 2 ;;
esac
NAME=$1
BIN="$CACHE/$NAME-$VERSION"

log() { printf '[build-%s] %s\n' "$NAME" "$*" >&2; }

version_ok() {
  # Capture first: `grep -q` closing the pipe early would fail the check under pipefail.
  local reported
  [[ -x $1 ]] && reported=$("$1" version 2>/dev/null) || return 1
  reported=${reported%%$'\n'*}
  [[ $reported == "$NAME version $VERSION" || $reported == "$NAME version $VERSION "* ]]
}

if version_ok "$BIN"; then
  echo "$BIN"
  exit 0
fi
# One already installed at the pinned version serves as well as one we build.
if installed=$(command -v "$NAME") && version_ok "$installed"; then
  log "using the installed $NAME $VERSION at $installed (not building)"
  echo "$installed"
  exit 0
fi

command -v go >/dev/null || { log "go not found on PATH"; exit 1; }
command -v gcc >/dev/null || { log "gcc not found (embedded Dolt needs CGO)"; exit 1; }
mkdir -p "$CACHE"
log "building $NAME $VERSION into $BIN (first time only)"
start=$(date +%s)
(
  cd "$TOOLS_DIR/$NAME"
  GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=1 \
    nice -n "${TOOLS_NICE:-0}" \
    go build -p "${TOOLS_BUILD_JOBS:-$(nproc)}" -tags gms_pure_go -trimpath -ldflags "-s -w" \
      -o "$BIN.tmp" "$PACKAGE"
)
mv "$BIN.tmp" "$BIN"
if ! version_ok "$BIN"; then
  log "built binary reports '$("$BIN" version 2>&1 | head -1)', expected $NAME version $VERSION"
  exit 1
fi
log "built in $(( $(date +%s) - start ))s"
echo "$BIN"
