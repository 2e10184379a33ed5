#!/usr/bin/env bash
# Build one of the CGO tools the tests run, from its pinned Go module under tools/<name>/,
# into the tools cache; reuse the binary while `<binary> version` still reports the pin.
#
#   tools/build-go-tool.sh bd      # bd 1.0.2 (beads CLI, embedded Dolt)   ~3-4 min first time
#   tools/build-go-tool.sh dolt    # dolt 1.84.0 (sql-server for server mode) ~3 min first time
#   tools/build-go-tool.sh promtool  # promtool 3.16.0 (`promtool test rules`) ~13 min first time
#
# Prints the path of the binary on stdout. Knobs: TOOLS_CACHE, TOOLS_BUILD_JOBS (go build -p,
# default: every core), TOOLS_NICE (default 0). bd and dolt: CGO on with -tags gms_pure_go, as
# upstream builds them (embedded Dolt needs CGO; the tag drops the ICU dependency). promtool:
# no CGO, and -tags remove_all_sd drops the cloud service discoveries it never uses here.
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TOOLS_CACHE:-$HOME/.cache/beads-autodispatch/bin}

CGO=1 TAGS=gms_pure_go LDFLAGS="-s -w" VERSION_ARGS=(version)
case ${1:-} in
  bd) VERSION=1.0.2 PACKAGE=github.com/steveyegge/beads/cmd/bd ;;
  dolt) VERSION=1.84.0 PACKAGE=github.com/dolthub/dolt/go/cmd/dolt ;;
  promtool)
    # Prometheus 3.16.0 is Go module version v0.316.0 (tools/promtool/go.mod); its release
    # build stamps the version with -X, so this one does too.
    VERSION=3.16.0 PACKAGE=github.com/prometheus/prometheus/cmd/promtool
    CGO=0 TAGS=remove_all_sd VERSION_ARGS=(--version)
    LDFLAGS+=" -X github.com/prometheus/common/version.Version=$VERSION" ;;
  *) echo "usage: $0 bd|dolt|promtool" >&2; exit 2 ;;
esac
NAME=$1
BIN="$CACHE/$NAME-$VERSION"

log() { printf '[build-%s] %s\n' "$NAME" "$*" >&2; }

version_ok() {
  # Capture first: `grep -q` closing the pipe early would fail the check under pipefail.
  local reported
  [[ -x $1 ]] && reported=$("$1" "${VERSION_ARGS[@]}" 2>/dev/null) || return 1
  reported=${reported%%$'\n'*}
  # bd and dolt say "bd version 1.0.2 ..."; promtool says "promtool, version 3.16.0 (...)".
  [[ $reported =~ ^$NAME,?\ version\ ${VERSION//./\\.}($|\ ) ]]
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
[[ $CGO == 0 ]] || command -v gcc >/dev/null || { log "gcc not found (embedded Dolt needs CGO)"; exit 1; }
mkdir -p "$CACHE"
log "building $NAME $VERSION into $BIN (first time only)"
if [[ $NAME == promtool ]]; then
  # The -X stamp above must not outlive a change of the pin in go.mod.
  pinned=$(cd "$TOOLS_DIR/$NAME" && GOTOOLCHAIN=local go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
  [[ $pinned == "v0.${VERSION%%.*}$(printf '%02d' "$(cut -d. -f2 <<<"$VERSION")").${VERSION##*.}" ]] ||
    { log "tools/promtool/go.mod pins prometheus $pinned, not $VERSION: update VERSION in $0"; exit 1; }
fi
start=$(date +%s)
(
  cd "$TOOLS_DIR/$NAME"
  GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=$CGO \
    nice -n "${TOOLS_NICE:-0}" \
    go build -p "${TOOLS_BUILD_JOBS:-$(nproc)}" -tags "$TAGS" -trimpath -ldflags "$LDFLAGS" \
      -o "$BIN.tmp" "$PACKAGE"
)
mv "$BIN.tmp" "$BIN"
if ! version_ok "$BIN"; then
  log "built binary reports '$("$BIN" "${VERSION_ARGS[@]}" 2>&1 | head -1)', expected $NAME version $VERSION"
  exit 1
fi
log "built in $(( $(date +%s) - start ))s"
echo "$BIN"
