#!/usr/bin/env bash
# The main job: set up .venv (core dependencies only), build the synthetic dataset, train a tiny CLIP
# from scratch, evaluate it before and after training, and print the results table.
# Extra arguments go to experiments/synthetic_e2e.py (e.g. --steps 100, --workdir DIR, --update-readme).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh core
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python experiments/synthetic_e2e.py "$@"
