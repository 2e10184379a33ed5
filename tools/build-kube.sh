#!/usr/bin/env bash
# Build a Kubernetes control plane from pinned Go modules (no binary downloads): what
# devtools/localcluster/ starts on loopback so that tests can run `pulumi up` against a real API
# server. No kubelet: pods are scheduled (or not) but never run.
#
#   tools/build-kube.sh                         # prints the binaries' directory on stdout
#   TOOLS_CACHE=/some/dir tools/build-kube.sh
#
# Result (TOOLS_CACHE defaults to $HOME/.cache/beads-autodispatch/bin), from
# tools/kubernetes/go.mod:
#   $TOOLS_CACHE/kube-v1.34.12/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
#   $TOOLS_CACHE/kube-v1.34.12/etcd            etcd 3.6.4 (the version Kubernetes requires)
# This directory is deliberately not $TOOLS_CACHE itself, which goes on PATH elsewhere.
#
# All five are built by ONE `go build` (they share most packages, so each is compiled
# once) with the version stamps of upstream's release build (hack/lib/version.sh), so
# `kubectl version` and the API server's /version report v1.34.12. They are rebuilt only
# when one is missing or when the stamp (hash of go.mod, go.sum, tools.go, build flags and
# Go version) changed; a run with everything cached takes a second or two.
#
# Knobs: TOOLS_CACHE, TOOLS_BUILD_JOBS (go build -p, default: every core), TOOLS_NICE (default 0).
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOD_DIR=$TOOLS_DIR/kubernetes
CACHE=${TOOLS_CACHE:-$HOME/.cache/beads-autodispatch/bin}
JOBS=${TOOLS_BUILD_JOBS:-$(nproc)}
NICE=(nice -n "${TOOLS_NICE:-0}")

K8S_MODULE=k8s.io/kubernetes
K8S_VERSION=v1.34.12
ETCD_MODULE=go.etcd.io/etcd/server/v3
ETCD_VERSION=v3.6.4
OUT=$CACHE/kube-$K8S_VERSION
# binary name => main package. `go build -o dir/` names etcd's binary "server" (the path
# element before /v3); it is renamed below.
PACKAGES=(
  "$K8S_MODULE/cmd/kube-apiserver"
  "$K8S_MODULE/cmd/kube-controller-manager"
  "$K8S_MODULE/cmd/kube-scheduler"
  "$K8S_MODULE/cmd/kubectl"
  "$ETCD_MODULE"
)
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

export GOTOOLCHAIN=local   # never download a Go toolchain
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0       # as upstream's release builds of these binaries

log() { printf '[build-kube] %s\n' "$*" >&2; }
die() { printf '[build-kube] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go not found on PATH"

# modver <module>: version selected by tools/kubernetes/go.mod
modver() { (cd "$MOD_DIR" && go list -m -f '{{.Version}}' "$1"); }
[[ $(modver "$K8S_MODULE") == "$K8S_VERSION" ]] ||
  die "tools/kubernetes/go.mod no longer selects $K8S_MODULE $K8S_VERSION; update K8S_VERSION in $0"
[[ $(modver "$ETCD_MODULE") == "$ETCD_VERSION" ]] ||
  die "tools/kubernetes/go.mod no longer selects $ETCD_MODULE $ETCD_VERSION; update ETCD_VERSION in $0"

# Commit and date of the release tag, from the module's .info in GOMODCACHE (the proxy
# records the tag's Origin there); cached, so this costs nothing after the first run.
info_file=$(cd "$MOD_DIR" && go mod download -json "$K8S_MODULE" |
  sed -n 's/^[[:space:]]*"Info": "\(.*\)",\{0,1\}$/\1/p')
info=$(cat "$info_file" 2>/dev/null || true)
git_commit=$(grep -o '"Hash":"[0-9a-f]\{40\}"' <<<"$info" | head -1 | cut -d'"' -f4 || true)
build_date=$(grep -o '"Time":"[^"]*"' <<<"$info" | head -1 | cut -d'"' -f4 || true)
[[ $build_date =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$ ]] || build_date=1970-01-01T00:00:00Z
major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v"$major".}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  # "archive": built from a source archive (the module zip), not a git checkout
  ldflags+=" -X $pkg.gitTreeState=archive -X $pkg.buildDate=$build_date"
  [[ -z $git_commit ]] || ldflags+=" -X $pkg.gitCommit=$git_commit"
done
flags=(-trimpath -ldflags "$ldflags")

# stamp: hash of everything that determines the binaries
stamp() {
  {
    go version
    printf '%s\n' "${flags[@]}" "${PACKAGES[@]}" "$GOFLAGS" "$CGO_ENABLED"
    (cd "$MOD_DIR" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}
want=$(stamp)
fresh() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $OUT/$b ]] || return 1; done
  [[ -f $OUT/.stamp && $(cat "$OUT/.stamp") == "$want" ]]
}

if fresh; then
  log "kubernetes $K8S_VERSION + etcd $ETCD_VERSION: up to date in $OUT"
else
  mkdir -p "$OUT"
  work=$(mktemp -d "$OUT/.build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $K8S_VERSION" \
    "and etcd $ETCD_VERSION (cold: ~10 min on 2 cores; -p $JOBS, nice ${TOOLS_NICE:-0}) ..."
  t=$SECONDS
  (cd "$MOD_DIR" && "${NICE[@]}" go build -p "$JOBS" "${flags[@]}" -o "$work/" "${PACKAGES[@]}")
  mv "$work/server" "$work/etcd"
  log "built in $((SECONDS - t))s"
  rm -f "$OUT/.stamp"
  for b in "${BINARIES[@]}"; do mv -f "$work/$b" "$OUT/$b"; done
  echo "$want" >"$OUT/.stamp"
fi

# Version checks: capture first (grep -q closing a pipe early would fail under pipefail).
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  got=$("$OUT/$b" --version 2>&1) || die "'$OUT/$b --version' failed: $got"
  [[ $got == "Kubernetes $K8S_VERSION" ]] || die "'$b --version' printed '$got', expected Kubernetes $K8S_VERSION"
done
got=$("$OUT/kubectl" version --client 2>&1) || die "'kubectl version --client' failed: $got"
[[ $got == *"Client Version: $K8S_VERSION"* ]] || die "'kubectl version --client' printed '$got'"
got=$("$OUT/etcd" --version 2>&1) || die "'etcd --version' failed: $got"
[[ $got == *"etcd Version: ${ETCD_VERSION#v}"* ]] || die "'etcd --version' printed '$got'"

log "kubernetes $K8S_VERSION + etcd $ETCD_VERSION in $OUT"
echo "$OUT"
