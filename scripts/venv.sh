#!/usr/bin/env bash
# Create or update .venv at the repo root. Usage: scripts/venv.sh [core|test]
# Installs only when setup.py or constraints.txt changed since the last install (a stamp file records it).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-core}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
spec="."
[ "$extra" = "test" ] && spec=".[test]"
stamp=".venv/.installed-$extra"
want="$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[venv] installing clip_jax ($extra) into .venv ..." >&2
    .venv/bin/pip install -q -c constraints.txt -e "$spec"
    # Without its declared `tensorflow` (a CUDA build that would overwrite tensorflow-cpu's files).
    .venv/bin/pip install -q -c constraints.txt --no-deps tensorflow-text
    echo "$want" > "$stamp"
fi
