#!/usr/bin/env bash
# Import benchmarks in one go: sets up the machine as for the tests plus nginx (scripts/setup.sh), then
# runs bench/bench_import.py with the arguments given here (e.g. --quick, --cases qcow2,xz, --reps 3).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh nginx
exec .venv/bin/python bench/bench_import.py "$@"
