#!/usr/bin/env bash
# The test command: set up .venv with the test extras, check style, run the suite offline on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers, each test file on one (module fixtures are shared within a file): 2 cores kept busy.
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
