#!/usr/bin/env bash
# 1-GPU: depth 12 on the embedded corpus (no download), the `gpu` preset. NOT YET RUN by this project: its
# time and quality are unmeasured (no GPU was lent to the sessions that wrote it). The stage-by-stage form
# below is what `speedrun --preset gpu` runs (it adds evaluation and checkpoint intervals).
set -euo pipefail
python -m mini_nanochat speedrun --preset gpu
# the same, stage by stage:
#   python -m mini_nanochat data
#   python -m mini_nanochat tok-train --vocab-size 4096
#   python -m mini_nanochat base-train --depth 12 --max-seq-len 1024 --device-batch-size 32 --num-iterations 400 --model-tag speedrun-gpu
#   python -m mini_nanochat base-eval --model-tag speedrun-gpu --max-per-task 500
#   python -m mini_nanochat sft --model-tag speedrun-gpu --num-iterations 600 --eval-questions 200
#   python -m mini_nanochat rl --model-tag speedrun-gpu --num-iterations 60 --eval-questions 200
#   python -m mini_nanochat chat-eval --model-tag speedrun-gpu
#   python -m mini_nanochat report --model-tag speedrun-gpu
