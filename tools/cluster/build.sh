#!/usr/bin/env bash
# Builds the node parts of the local single-node cluster (tools/cluster/README.md):
# kubelet, kube-proxy, kube-scheduler and kube-controller-manager from node/go.mod (the
# same k8s.io/kubernetes release as tools/controlplane) and CoreDNS from coredns/go.mod.
#
# Idempotent: binaries go to ${JIOMOSA_CACHE:-/var/cache/jiomosa}/cluster/<k8s-version>/;
# when they are there (built from the same go.mod/go.sum files) nothing is done. The
# directory is printed as the last line on stdout; everything else goes to stderr.
# A cold build takes ~8 min on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "cluster/build.sh: $*" >&2; }

BUILD_REV=1  # bump when this script changes how the binaries are built

k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/node/go.mod")"
coredns_version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$here/coredns/go.mod")"
[[ -n "$k8s_version" && -n "$coredns_version" ]] || { log "cannot read versions from go.mod"; exit 1; }

cache_root="${JIOMOSA_CACHE:-/var/cache/jiomosa}"
mkdir -p "$cache_root/cluster"
out="$cache_root/cluster/$k8s_version"
binaries=(kubelet kube-proxy kube-scheduler kube-controller-manager coredns)
stamp="$(
  { echo "rev=$BUILD_REV k8s=$k8s_version coredns=$coredns_version"
    cat "$here/node/go.mod" "$here/node/go.sum" "$here/coredns/go.mod" "$here/coredns/go.sum"
  } | sha256sum | cut -d' ' -f1
)"
is_built() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || return 1; done
  [[ "$(cat "$out/.stamp" 2>/dev/null)" == "$stamp" ]]
}
if is_built; then echo "$out"; exit 0; fi
exec 9>"$cache_root/cluster/.build.lock"
flock 9
if is_built; then echo "$out"; exit 0; fi

go_bin="$(command -v go || echo /usr/local/go/bin/go)"
[[ -x "$go_bin" ]] || { log "Go >= 1.23 is needed (expected at /usr/local/go/bin/go or on PATH)"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0

log "building Kubernetes $k8s_version node parts and CoreDNS $coredns_version into $out"
start=$SECONDS
tmp="$(mktemp -d "$cache_root/cluster/.build-$k8s_version.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

source "$here/../controlplane/version-ldflags.sh"
vflags="$(k8s_version_ldflags "$k8s_version")"
goflags=(-mod=readonly -trimpath)
(
  cd "$here/node"
  for cmd in kubelet kube-proxy kube-scheduler kube-controller-manager; do
    "$go_bin" build "${goflags[@]}" -ldflags "-s -w$vflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    log "$cmd built ($((SECONDS - start)) s)"
  done
  cd "$here/coredns"
  "$go_bin" build "${goflags[@]}" -ldflags "-s -w" -o "$tmp/coredns" github.com/coredns/coredns
  log "coredns built ($((SECONDS - start)) s)"
) >&2
"$tmp/kubelet" --version >&2
echo "$stamp" > "$tmp/.stamp"
printf 'kubernetes %s\ncoredns %s\ngo %s\n' "$k8s_version" "$coredns_version" \
  "$("$go_bin" env GOVERSION)" > "$tmp/VERSIONS"
chmod 755 "$tmp"
[[ -e "$out" ]] && { rm -rf "$out.old"; mv "$out" "$out.old"; }
mv "$tmp" "$out"
rm -rf "$out.old"
trap - EXIT
log "done in $((SECONDS - start)) s"
echo "$out"
