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
