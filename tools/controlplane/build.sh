#!/usr/bin/env bash
# Builds a local Kubernetes control plane (kube-apiserver, etcd, and a matching
# kubectl) from the Go modules pinned in apiserver/go.mod and etcd/go.mod.
#
# Idempotent: binaries go to
#   ${JIOMOSA_CACHE:-/var/cache/jiomosa}/controlplane/<k8s-version>/
# and when they are already there (built from the same go.mod/go.sum) nothing
# is done. The directory is printed as the last line on stdout; everything
# else goes to stderr.
#
# Needs Go >= 1.23 (this machine kind has it in /usr/local/go/bin) and the Go
# module proxy. A cold build takes ~5 min on 2 cores (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "controlplane/build.sh: $*" >&2; }

# Bump when this script changes how the binaries are built.
BUILD_REV=1

k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/apiserver/go.mod")"
etcd_version="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")"
[[ -n "$k8s_version" && -n "$etcd_version" ]] || { log "cannot read versions from go.mod files"; exit 1; }

cache_root="${JIOMOSA_CACHE:-/var/cache/jiomosa}"
if ! mkdir -p "$cache_root/controlplane" 2>/dev/null || [[ ! -w "$cache_root/controlplane" ]]; then
  if [[ -n "${JIOMOSA_CACHE:-}" ]]; then log "cache dir $cache_root is not writable"; exit 1; fi
  cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/jiomosa"
  mkdir -p "$cache_root/controlplane"
fi
out="$cache_root/controlplane/$k8s_version"
binaries=(kube-apiserver etcd kubectl)

stamp="$(
  {
    echo "rev=$BUILD_REV k8s=$k8s_version etcd=$etcd_version"
    cat "$here/apiserver/go.mod" "$here/apiserver/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum"
  } | sha256sum | cut -d' ' -f1
)"

is_built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || return 1; done
  [[ "$(cat "$out/.stamp" 2>/dev/null)" == "$stamp" ]]
}

# Fast path, without locking.
if is_built; then
  echo "$out"
  exit 0
fi

# Serialise concurrent builds (parallel test runs, make -j).
exec 9>"$cache_root/controlplane/.build.lock"
flock 9
if is_built; then
  echo "$out"
  exit 0
fi

# --- Go toolchain -----------------------------------------------------------
go_bin="$(command -v go || true)"
[[ -n "$go_bin" ]] || go_bin=/usr/local/go/bin/go
if [[ ! -x "$go_bin" ]]; then
  log "Go >= 1.23 is needed (expected at /usr/local/go/bin/go or on PATH)"
  exit 1
fi
go_minor="$("$go_bin" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
if [[ -z "$go_minor" || "$go_minor" -lt 23 ]]; then
  log "Go >= 1.23 is needed, found $("$go_bin" env GOVERSION) at $go_bin"
  exit 1
fi

export GOTOOLCHAIN=local   # never try to download another toolchain
export CGO_ENABLED=0       # static binaries, no C compiler needed (as upstream)
# GOMODCACHE/GOCACHE: Go's defaults (they persist on the machine).

log "building Kubernetes $k8s_version (kube-apiserver, kubectl) and etcd $etcd_version with $("$go_bin" env GOVERSION) into $out"
start=$SECONDS
tmp="$(mktemp -d "$cache_root/controlplane/.build-$k8s_version.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

source "$here/version-ldflags.sh"
vflags="$(k8s_version_ldflags "$k8s_version")"

# -mod=readonly: builds exactly what the committed go.mod/go.sum pin.
goflags=(-mod=readonly -trimpath)

(
  cd "$here/apiserver"
  "$go_bin" build "${goflags[@]}" -ldflags "-s -w$vflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  log "kube-apiserver built ($((SECONDS - start)) s)"
  "$go_bin" build "${goflags[@]}" -ldflags "-s -w$vflags" -o "$tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
  log "kubectl built ($((SECONDS - start)) s)"
) >&2
(
  cd "$here/etcd"
  "$go_bin" build "${goflags[@]}" -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
  log "etcd built ($((SECONDS - start)) s)"
) >&2

"$tmp/kube-apiserver" --version >&2
"$tmp/etcd" --version | head -1 >&2
echo "$stamp" > "$tmp/.stamp"
cat > "$tmp/VERSIONS" <<EOT
kubernetes $k8s_version
etcd $etcd_version
go $("$go_bin" env GOVERSION)
EOT

# Swap the finished directory into place.
chmod 755 "$tmp"
if [[ -e "$out" ]]; then
  rm -rf "$out.old"
  mv "$out" "$out.old"
fi
mv "$tmp" "$out"
rm -rf "$out.old"
trap - EXIT
log "done in $((SECONDS - start)) s"
echo "$out"
