#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for cdi: system packages, a virtual environment at .venv with cdi
# installed (editable) and its test tools. Safe to run again; quick when everything is there.
# Extra Debian packages may be named as arguments (bench/run.sh adds nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-utils qemu-block-extra qemu-system-x86 ovmf nbdkit
  xz-utils zstd bzip2 pigz libmagic1 file
  genisoimage xorriso mtools dosfstools fdisk syslinux syslinux-common extlinux busybox-static cpio
  docker-registry skopeo util-linux curl ca-certificates xfsprogs
  chromium chromium-driver
  "$@"
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The web console's vendored assets (cdi/console/static/vendor, not in git): pinned npm tarballs, their
# sha512 checked against the integrity recorded here before anything is unpacked.
VENDOR=cdi/console/static/vendor
vendor() {  # NAME VERSION INTEGRITY FILE...
  local name=$1 version=$2 integrity=$3; shift 3
  local stamp="$VENDOR/.${name//\//_}-$version"
  [ -f "$stamp" ] && return 0
  local tmp; tmp=$(mktemp -d)
  if command -v npm >/dev/null; then
    (cd "$tmp" && npm pack -q "$name@$version" >/dev/null)
  else  # the registry's tarball itself (its integrity is checked below either way)
    curl -fsSL -o "$tmp/package.tgz" "https://registry.npmjs.org/$name/-/${name#*/}-$version.tgz"
  fi
  local tgz; tgz=$(ls "$tmp"/*.tgz)
  local got; got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    echo "setup: $name@$version: integrity $got differs from the pinned $integrity" >&2; rm -rf "$tmp"; return 1
  fi
  mkdir -p "$VENDOR/$name"
  tar -xzf "$tgz" -C "$tmp"
  for f in "$@"; do install -D -m 0644 "$tmp/package/$f" "$VENDOR/$name/$f"; done
  install -m 0644 "$tmp/package/LICENSE" "$VENDOR/$name/LICENSE"
  rm -rf "$tmp"; touch "$stamp"
}
vendor @xterm/xterm 6.0.0 'sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg==' \
  lib/xterm.mjs css/xterm.css
vendor axe-core 4.14.1 'sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==' \
  axe.min.js

command -v kubectl >/dev/null || echo "setup: warning: kubectl not found; the end-to-end tests need it" >&2

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.cdi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

# helm-sdkpy bundles Helm's Go library (the chart tests lint with it); its metadata asks for Python 3.12
# but it runs on 3.11, so it is installed apart from pyproject's test extra, ignoring that requirement.
.venv/bin/python -c "import helm_sdkpy" 2>/dev/null \
  || .venv/bin/pip install -q --ignore-requires-python "helm-sdkpy==0.1.32"

# Helm itself (the chart tests render with `helm template`): no Debian package, so it is built once from
# the Go module proxy into a cache outside the checkout (about 4-16 min of 2 cores, 108 MB).
HELM_VERSION=v3.16.4
# As Helm's Makefile links it: its own version, and as default Kubernetes version the one of the
# client-go it is built with (v0.31 -> 1.31), so a plain `helm template` meets the chart's kubeVersion
# (a bare `go install` leaves v3.16 and Kubernetes 1.20).
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=31
HELM_LDFLAGS="-w -s -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  HELM_LDFLAGS="$HELM_LDFLAGS -X $pkg.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
TOOLS=${CDI_TOOLS_DIR:-$HOME/.cache/cdi-tools}
if [ "$("$TOOLS/helm" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_VERSION" ]; then
  GO=$(command -v go || echo /usr/local/go/bin/go)
  if [ ! -x "$GO" ]; then
    echo "setup: Go (1.22 or later) is needed to build helm $HELM_VERSION into $TOOLS" >&2
    exit 1
  fi
  echo "setup: building helm $HELM_VERSION into $TOOLS (takes minutes)" >&2
  mkdir -p "$TOOLS/.helm-build"
  GOBIN="$TOOLS/.helm-build" GOFLAGS=-mod=mod "$GO" install -ldflags "$HELM_LDFLAGS" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$TOOLS/.helm-build/helm" "$TOOLS/helm"
fi
