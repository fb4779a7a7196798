#!/usr/bin/env bash
# Build the container images on this machine from Debian packages and PyPI wheels, with no
# image registry: mmdebstrap writes each root filesystem as a tar (one OCI layer), oci.py
# wraps it into an OCI archive that `ctr -n k8s.io images import` and `kind load
# image-archive` load. Archives are cached under $JIOMOSA_CACHE/images by a hash of what they
# are made of; the last lines of the output are the archive paths, one per line.
#
#   tools/images/build.sh [IMAGE...]      IMAGE: jiomosa, jiomosa-browser, redis, pause
#                                         (default: jiomosa jiomosa-browser)
# Needs root (mmdebstrap --mode=root), mmdebstrap, python3 and the project's venv (.venv) for
# pip. images/README.md says what each image holds; the Dockerfiles under images/ build the
# same content for registries and hosted CI.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${JIOMOSA_CACHE:-/var/cache/jiomosa}/images
venv_pip=${VENV_PIP:-$root/.venv/bin/pip}
registry=${JIOMOSA_IMAGE_REGISTRY:-jiomosa.local}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n1)
mirrors=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
mkdir -p "$cache"

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(jiomosa jiomosa-browser)

# What an image is made of: this recipe, and for images holding jiomosa, its sources.
recipe_hash() {
  sha256sum "$here/build.sh" "$here/oci.py" "$here/pause.c" "$here/agent-requirements.txt" \
    | sha256sum | cut -c1-16
}
source_hash() {
  (cd "$root" && git ls-files -z pyproject.toml README.md streamer operator \
     | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# Debian packages and container config of each image (one place: the Dockerfiles mirror it).
packages_of() {
  case "$1" in
    jiomosa) echo "python3,python3-pip,ca-certificates" ;;
    jiomosa-browser) echo "chromium,python3,python3-pip,fonts-dejavu-core,fonts-liberation,ca-certificates" ;;
    redis) echo "redis-server" ;;
    pause) echo "" ;;
    *) echo "unknown image $1" >&2; exit 2 ;;
  esac
}

config_of() {
  local env='"PATH=/usr/local/bin:/usr/bin:/bin","HOME=/tmp","TMPDIR=/tmp","PYTHONDONTWRITEBYTECODE=1","PYTHONUNBUFFERED=1"'
  case "$1" in
    jiomosa) echo '{"User":"10001:10001","Env":['"$env"'],"Entrypoint":["jiomosa"],"Cmd":["serve","--host","0.0.0.0","--port","5000"],"WorkingDir":"/tmp","ExposedPorts":{"5000/tcp":{},"8080/tcp":{}},"Labels":{"org.opencontainers.image.title":"jiomosa","org.opencontainers.image.licenses":"MIT"}}' ;;
    jiomosa-browser) echo '{"User":"10001:10001","Env":['"$env"'],"Entrypoint":["jiomosa"],"Cmd":["browser","--port","9300"],"WorkingDir":"/tmp","ExposedPorts":{"9300/tcp":{}},"Labels":{"org.opencontainers.image.title":"jiomosa-browser","org.opencontainers.image.licenses":"MIT"}}' ;;
    # No entrypoint: the chart's StatefulSet gives the whole command line (redis-server ...).
    redis) echo '{"User":"10001:10001","Env":["PATH=/usr/bin:/bin"],"Cmd":["redis-server","--port","6379","--protected-mode","no","--save","","--appendonly","no"],"WorkingDir":"/tmp","ExposedPorts":{"6379/tcp":{}}}' ;;
    pause) echo '{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"}' ;;
  esac
}

# The agent's requirements (agent-requirements.txt) with their constraints from pyproject.toml.
agent_requirements() {
  python3 - "$root/pyproject.toml" "$here/agent-requirements.txt" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
wanted = {line.strip().lower() for line in open(sys.argv[2])
          if line.strip() and not line.startswith("#")}
print(" ".join(f"'{d}'" for d in deps if re.split(r"[<>=!~ \[;]", d, 1)[0].lower() in wanted))
PY
}

wheels_dir() {
  local dir="$cache/wheels-$(source_hash)"
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    local build
    build=$(mktemp -d)
    "$venv_pip" wheel -q --no-deps -w "$build" "$root" >&2
    # Debian bookworm's python3 is 3.11.2: markers for < 3.11.3 pull async-timeout in.
    "$venv_pip" wheel -q -w "$dir" "$build"/jiomosa-*.whl "async-timeout>=4.0.3" >&2
    rm -rf "$build"
    touch "$dir/.done"
  fi
  echo "$dir"
}

build_rootfs() {  # IMAGE OUT.tar
  local image=$1 out=$2 hooks=()
  local include
  include=$(packages_of "$image")
  case "$image" in
    jiomosa|jiomosa-browser)
      local wheels pip requirements="" deps=""
      wheels=$(wheels_dir)
      pip='chroot "$1" python3 -m pip install -q --no-index --find-links /tmp/wheels --no-cache-dir --break-system-packages --root-user-action=ignore'
      if [ "$image" = jiomosa-browser ]; then
        # The agent needs jiomosa's core, browser and agent packages and their few
        # requirements, not the streamer's or the operator's (Selenium, kopf, kubernetes, ...:
        # ~140 MB). tests/test_agent.py checks the agent imports nothing else.
        requirements=$(agent_requirements)
        deps=--no-deps
      fi
      hooks+=(
        --customize-hook='mkdir -p "$1"/tmp/wheels'
        --customize-hook="sync-in $wheels /tmp/wheels"
        ${requirements:+--customize-hook="$pip $requirements"}
        --customize-hook="$pip $deps jiomosa"
        --customize-hook='chroot "$1" apt-get purge -y -qq python3-pip'
        --customize-hook='chroot "$1" apt-get autoremove -y -qq'
        --customize-hook='chroot "$1" jiomosa --version'
      )
      if [ "$image" = jiomosa-browser ]; then
        # Headless Chromium with --disable-gpu renders with its bundled SwiftShader: Mesa's
        # drivers and LLVM, GTK and its icons (loaded only with a display), perl and
        # systemd (pulled in by packaging scripts) are never used. ~330 MB.
        hooks+=(
          --customize-hook='chroot "$1" dpkg --purge --force-depends,remove-essential libllvm15 libz3-4 libgl1-mesa-dri libgtk-3-0 libgtk-3-common libgtk-3-bin adwaita-icon-theme perl libperl5.36 perl-modules-5.36 libpam-systemd systemd-sysv systemd libsystemd-shared dbus-user-session >/dev/null'
          --customize-hook='rm -f "$1"/usr/lib/chromium/libVkLayer_khronos_validation.so'
          --customize-hook='find "$1"/usr/lib/chromium/locales -name "*.pak" ! -name en-US.pak -delete'
          --customize-hook='chroot "$1" jiomosa browser --help >/dev/null'
        )
      fi ;;
    pause)
      # The pod sandbox's process, alone in its image (containerd's sandbox_image).
      local dir
      dir=$(mktemp -d)
      cc -static -O2 -o "$dir/pause" "$here/pause.c"
      tar --owner=0 --group=0 -C "$dir" -cf "$out" pause
      rm -rf "$dir"
      return ;;
  esac
  mmdebstrap --variant=apt --mode=root --format=tar --quiet \
    ${include:+--include="$include"} \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "${hooks[@]}" \
    --customize-hook='rm -rf "$1"/tmp/* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log' \
    --customize-hook='if [ -x "$1"/usr/sbin/useradd ]; then chroot "$1" useradd --uid 10001 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin jiomosa; fi' \
    bookworm "$out" "${mirrors[@]}" >&2
}

built=()
for image in "${images[@]}"; do
  sources=""
  case "$image" in jiomosa|jiomosa-browser) sources=$(source_hash) ;; esac
  key=$(printf '%s\n' "$image" "$(recipe_hash)" "$sources" "$(packages_of "$image")" \
        | sha256sum | cut -c1-16)
  archive="$cache/$image-$version-$key.oci.tar"
  if [ ! -f "$archive" ]; then
    echo "building $image (cache key $key)" >&2
    rootfs=$(mktemp --suffix=.tar)
    trap 'rm -f "$rootfs"' EXIT
    started=$(date +%s)
    build_rootfs "$image" "$rootfs"
    config=$(mktemp)
    config_of "$image" > "$config"
    python3 "$here/oci.py" "$rootfs" "$archive" --name "$registry/$image:$version" \
      --config "$config" >&2
    rm -f "$rootfs" "$config"
    trap - EXIT
    echo "$image built in $(( $(date +%s) - started )) s" >&2
  fi
  built+=("$archive")
done
printf '%s\n' "${built[@]}"
