#!/usr/bin/env bash
# The benchmark command: set up .venv with the test extras (torch and open_clip are the references), then
# run benchmarks/run_all.py, which regenerates benchmarks/RESULTS.md. Arguments go to run_all.py
# (e.g. --quick, --only train_step, --render).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python benchmarks/run_all.py "$@"
