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
TOOLS=${CDI_TOOLS_DIR:-$HOME/.cache/cdi-tools}
if [ ! -x "$TOOLS/helm" ]; then
  GO=$(command -v go || echo /usr/local/go/bin/go)
  if [ ! -x "$GO" ]; then
    echo "setup: Go (1.22 or later) is needed to build helm $HELM_VERSION into $TOOLS" >&2
    exit 1
  fi
  echo "setup: building helm $HELM_VERSION into $TOOLS (takes minutes)" >&2
  mkdir -p "$TOOLS"
  GOBIN="$TOOLS" GOFLAGS=-mod=mod "$GO" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
