#!/usr/bin/env bash
# Import benchmarks in one go: installs what they need (nginx, pigz, xz, zstd, qemu-img, nbdkit, curl)
# when missing, makes sure the virtual environment exists, then runs bench/bench_import.py with the
# arguments given here (e.g. --quick, --cases qcow2,xz, --reps 3).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(nginx pigz xz-utils zstd qemu-utils nbdkit curl coreutils)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/cdi ]; then
  bash scripts/setup.sh
fi
exec .venv/bin/python bench/bench_import.py "$@"
