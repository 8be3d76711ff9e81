#!/usr/bin/env bash
# laptop: the cpu preset with an hour instead of ~20 minutes, on a laptop with 4-8 cores. A deeper model and
# longer budgets; the time plan turns the budgets into steps for this machine (ADR 0041).
# Not measured by this project: expect a lower val bpb than the default speedrun, not a different kind of model.
set -euo pipefail
python -m mini_nanochat speedrun --model-tag laptop --depth 6 --pretrain-seconds 2400 --sft-seconds 900 \
    --rl-iterations 60 --eval-per-task 100 --chat-eval-per-task 100
python -m mini_nanochat chat --model-tag laptop
