#!/usr/bin/env bash
# gpu_check.sh — everything that needs a GPU, in one call: under 7 minutes on an H100/H200 (--quick:
# under 3), CuPy's first compile included. A thin wrapper: the steps, their timeouts and the results
# (results.txt and results.json, appended as each step ends; the table printed last) are in
# scripts/gpu_check.py, whose --help lists the steps, statuses and exit codes
# (0 passed, 1 a step failed, 2 usage, 3 no usable GPU).
#
#   bash scripts/gpu_check.sh [RESULTS_DIR] [--quick] [--only STEP ...]
#   results: $OUT if set, else RESULTS_DIR, else ./gpu_check_results
#
# Runs from a plain checkout (PYTHONPATH is the checkout; nothing is installed, no network needed).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
