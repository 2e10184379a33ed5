#!/usr/bin/env bash
# Build the Pulumi CLI and the Kubernetes resource provider from pinned Go modules (no
# binary downloads), check their versions, and install the provider as a local plugin.
#
#   tools/build-pulumi.sh                       # prints the path of the pulumi CLI on stdout
#   TOOLS_CACHE=/some/dir tools/build-pulumi.sh
#   eval "$(tools/build-pulumi.sh --env)"       # same, then export PATH + offline env vars
#
# Results (TOOLS_CACHE defaults to $HOME/.cache/beads-autodispatch/bin):
#   $TOOLS_CACHE/pulumi                       CLI        <- tools/pulumi/go.mod
#   $TOOLS_CACHE/plugins/resource-kubernetes-v<ver>/pulumi-resource-kubernetes
#                                             provider   <- tools/pulumi-kubernetes/
# The provider is deliberately not directly in $TOOLS_CACHE: that dir goes on PATH, and
# the engine would use any pulumi-resource-* on PATH as an "ambient" plugin whatever
# version a program asks for. It is installed into $PULUMI_HOME/plugins (default
# ~/.pulumi/plugins) with `pulumi plugin install resource kubernetes <ver> --file ...`.
#
# No Python language host (pulumi-language-python) is built: the Go proxy serves no
# version of its module. Programs run through the Automation API with an inline program
# instead (devtools/localdeploy/stack.py): the engine then talks to the language runtime inside the
# calling Python process (`pulumi up --client`), which needs no language host binary.
#
# A binary is rebuilt only when missing or when its stamp (hash of go.mod, go.sum, local
# sources, build flags and Go version) changed; a run with both cached takes seconds.
#
# Knobs: TOOLS_CACHE, TOOLS_BUILD_JOBS (go build -p, default: every core), TOOLS_NICE (default 0),
#        PULUMI_HOME (pulumi's own variable: where plugins are installed).
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TOOLS_CACHE:-$HOME/.cache/beads-autodispatch/bin}
JOBS=${TOOLS_BUILD_JOBS:-$(nproc)}
NICE=(nice -n "${TOOLS_NICE:-0}")
# The provider is the longest build of all (about 24 min from cold on 2 cores, against ~18
# for the CLI or bd), so when they share the cores the others yield to it: a first run then
# ends when the total work does, not when the provider finally finishes on its own.
YIELD_NICE=(nice -n "$(( ${TOOLS_NICE:-0} + 4 ))")
PRINT_ENV=false
[[ ${1:-} == --env ]] && PRINT_ENV=true

# Kubernetes provider: the Go proxy serves github.com/pulumi/pulumi-kubernetes/provider/v4
# only as this pseudo-version, which is the commit tagged v4.25.0 upstream (see
# tools/pulumi-kubernetes/go.mod); the binary is stamped with that release number, and
# requirements.txt pins the Python SDK pulumi-kubernetes to the same release.
K8S_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4
K8S_PSEUDO=v4.0.0-20260115033456-f47bc2d6f199
K8S_VERSION=4.25.0

export GOTOOLCHAIN=local   # never download a Go toolchain
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0       # both are pure Go, as their release builds
# Offline pulumi (also printed by --env):
#   PULUMI_SKIP_UPDATE_CHECK                    no version check against api.pulumi.com
#   PULUMI_IGNORE_AMBIENT_PLUGINS               plugins only from the plugin cache, never PATH
#   PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION a missing plugin is an immediate error instead
#                                               of download attempts
#   PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK    only matters for the Automation API
export PULUMI_SKIP_UPDATE_CHECK=1
export PULUMI_IGNORE_AMBIENT_PLUGINS=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true

log() { printf '[build-pulumi] %s\n' "$*" >&2; }
die() { printf '[build-pulumi] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go not found on PATH"
mkdir -p "$CACHE"

# An earlier version of this script also built a Python language host from sources that
# may not be used here; never leave such a binary next to the CLI, where the engine looks.
for stale in pulumi-language-python pulumi-language-python.stamp pulumi-language-python-exec; do
  if [[ -e $CACHE/$stale ]]; then
    log "removing $CACHE/$stale (no longer built)"
    rm -f "${CACHE:?}/$stale"
  fi
done

# modver <tools subdir> <module>: version selected by that tool module's go.mod
modver() { (cd "$TOOLS_DIR/$1" && go list -m -f '{{.Version}}' "$2"); }
# moddir <tools subdir> <module>: module source dir in GOMODCACHE (downloads it if needed)
moddir() {
  (cd "$TOOLS_DIR/$1" && go mod download "$2" && go list -m -f '{{.Dir}}' "$2")
}
# stamp <tools subdir> <flags...>: hash of everything that determines the binary
stamp() {
  local dir=$TOOLS_DIR/$1; shift
  {
    go version
    printf '%s\n' "$@" "$GOFLAGS" "$CGO_ENABLED"
    (cd "$dir" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}
fresh() { [[ -x $1 && -f $1.stamp && $(cat "$1.stamp") == "$2" ]]; } # fresh <bin> <stamp>

PULUMI_VERSION=$(modver pulumi github.com/pulumi/pulumi/pkg/v3)   # v3.259.0
[[ $(modver pulumi-kubernetes "$K8S_MODULE") == "$K8S_PSEUDO" ]] ||
  die "tools/pulumi-kubernetes/go.mod no longer selects $K8S_MODULE $K8S_PSEUDO; update K8S_PSEUDO/K8S_VERSION in $0"

# ---- 0. a compatible pulumi already installed, with the Kubernetes plugin: use it -------
print_env() {
  cat <<EOF
export PATH="$1:\$PATH"
export PULUMI_SKIP_UPDATE_CHECK=1
export PULUMI_IGNORE_AMBIENT_PLUGINS=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=1
EOF
}
PULUMI_BIN=$CACHE/pulumi
if [[ ! -x $PULUMI_BIN ]] && installed=$(command -v pulumi) &&
  have=$("$installed" version 2>/dev/null) &&
  # The Python SDK is pinned to $PULUMI_VERSION: any v3 CLI at least that new drives it.
  [[ $have == v3.* && $(printf '%s\n' "$PULUMI_VERSION" "$have" | sort -V | head -1) == "$PULUMI_VERSION" ]] &&
  "$installed" plugin ls 2>/dev/null |
  grep -Eq "^kubernetes[[:space:]]+resource[[:space:]]+$K8S_VERSION[[:space:]]"; then
  log "using the installed pulumi $have at $installed with plugin kubernetes $K8S_VERSION (not building)"
  if $PRINT_ENV; then print_env "${installed%/*}"; else echo "$installed"; fi
  exit 0
fi

# ---- 1. pulumi CLI: the flags of upstream's release build ------------------------------
VERSION_VAR=github.com/pulumi/pulumi/sdk/v3/go/common/version.Version
cli_flags=(-trimpath -tags osusergo,grpcnotrace -ldflags "-w -s -X $VERSION_VAR=$PULUMI_VERSION")
cli_stamp=$(stamp pulumi "${cli_flags[@]}")
build_cli() {
  log "building pulumi $PULUMI_VERSION (slow) ..."
  local t=$SECONDS
  (cd "$TOOLS_DIR/pulumi" && "${YIELD_NICE[@]}" go build -p "$JOBS" "${cli_flags[@]}" \
    -o "$PULUMI_BIN.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  mv -f "$PULUMI_BIN.tmp" "$PULUMI_BIN"
  echo "$cli_stamp" >"$PULUMI_BIN.stamp"
  log "built pulumi in $((SECONDS - t))s"
}

# ---- 2. Kubernetes provider: our own main package + the module's schema files ----------
K8S_BIN=$CACHE/plugins/resource-kubernetes-v$K8S_VERSION/pulumi-resource-kubernetes
k8s_flags=(-trimpath -ldflags "-w -s -X $K8S_MODULE/pkg/version.Version=$K8S_VERSION")
k8s_stamp=$(stamp pulumi-kubernetes "${k8s_flags[@]}")
build_provider() {
  log "building pulumi-resource-kubernetes $K8S_VERSION (slow) ..."
  local t=$SECONDS work src main
  mkdir -p "${K8S_BIN%/*}"
  work=$(mktemp -d "${TMPDIR:-/tmp}/build-k8s-provider.XXXXXX")
  # The main package go:embeds schema.json and terraform-mapping.json; they come from the
  # provider module (read-only in GOMODCACHE) through -overlay, never from the repo.
  src=$(moddir pulumi-kubernetes "$K8S_MODULE")/cmd/pulumi-resource-kubernetes
  main=$TOOLS_DIR/pulumi-kubernetes/cmd/pulumi-resource-kubernetes
  [[ $src$main != *[\"\\]* ]] || die "paths with quotes or backslashes are not supported: $main $src"
  printf '{"Replace":{"%s":"%s","%s":"%s"}}\n' \
    "$main/schema.json" "$src/schema.json" \
    "$main/terraform-mapping.json" "$src/terraform-mapping.json" >"$work/overlay.json"
  (cd "$TOOLS_DIR/pulumi-kubernetes" &&
    "${NICE[@]}" go build -p "$JOBS" -overlay "$work/overlay.json" "${k8s_flags[@]}" \
      -o "$work/pulumi-resource-kubernetes" ./cmd/pulumi-resource-kubernetes)
  mv -f "$work/pulumi-resource-kubernetes" "$K8S_BIN"
  rm -rf "$work"
  echo "$k8s_stamp" >"$K8S_BIN.stamp"
  log "built pulumi-resource-kubernetes in $((SECONDS - t))s"
}

# Both at once: each link step runs on one core, and one build's downloads overlap the
# other's compiling, so together they finish sooner than one after the other.
pids=()
if fresh "$PULUMI_BIN" "$cli_stamp"; then
  log "pulumi $PULUMI_VERSION: up to date"
else
  build_cli &
  pids+=($!)
fi
if fresh "$K8S_BIN" "$k8s_stamp"; then
  log "pulumi-resource-kubernetes $K8S_VERSION: up to date"
else
  build_provider &
  pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid" || die "a build failed (see above)"; done

got=$("$PULUMI_BIN" version) && [[ $got == "$PULUMI_VERSION" ]] ||
  die "'$PULUMI_BIN version' printed '${got:-}', expected $PULUMI_VERSION"
# The provider has no --version flag: `pulumi package info` runs it and reads the version
# our main stamps into its schema (from the -X version.Version above).
got=$("$PULUMI_BIN" package info "$K8S_BIN" | sed -n 's/^Version: //p')
[[ $got == "$K8S_VERSION" ]] || die "'pulumi package info $K8S_BIN' reports version '$got', expected $K8S_VERSION"

# ---- 3. install the provider as a local plugin -----------------------------------------
plugin_bin=${PULUMI_HOME:-$HOME/.pulumi}/plugins/resource-kubernetes-v$K8S_VERSION/pulumi-resource-kubernetes
if cmp -s "$K8S_BIN" "$plugin_bin"; then
  log "plugin resource kubernetes $K8S_VERSION: installed"
else
  "$PULUMI_BIN" plugin install resource kubernetes "$K8S_VERSION" --file "$K8S_BIN" --reinstall >&2
  cmp -s "$K8S_BIN" "$plugin_bin" || die "plugin install did not produce $plugin_bin"
fi
plugins=$("$PULUMI_BIN" plugin ls)
grep -Eq "^kubernetes[[:space:]]+resource[[:space:]]+$K8S_VERSION[[:space:]]" <<<"$plugins" ||
  die "'pulumi plugin ls' does not list kubernetes $K8S_VERSION"

if $PRINT_ENV; then
  print_env "$CACHE"
else
  log "pulumi $PULUMI_VERSION, plugin resource kubernetes $K8S_VERSION ($plugin_bin)"
  echo "$PULUMI_BIN"
fi
