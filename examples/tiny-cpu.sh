#!/usr/bin/env bash
# tiny-cpu: every stage at toy sizes, ~2-5 minutes on 2 cores. What the test suite's smoke test runs
# (tests/test_speedrun.py). Proves the plumbing, not quality: the model answers nothing right.
set -euo pipefail
export MINI_NANOCHAT_HOME=${MINI_NANOCHAT_HOME:-$HOME/.cache/mini_nanochat}
python -m mini_nanochat speedrun --preset tiny
python -m mini_nanochat chat --model-tag speedrun-tiny -p "What is 2 + 2?"
