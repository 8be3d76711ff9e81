#!/usr/bin/env bash
# 8-GPU: nanochat's d24 speedrun recipe (runs/speedrun.sh at nanochat commit 92d63d4) with this project's
# stages: 170 ClimbMix shards, a 32,768-token tokenizer trained on 2B characters, depth 24 with
# tokens = 8 x parameters, 524,288 tokens per step, SFT, chat-eval. NOT YET RUN by this project (needs
# 8 GPUs and the network): time and quality unmeasured. `speedrun --preset gpu8` runs these
# (adding evaluation and checkpoint intervals).
set -euo pipefail
python -m mini_nanochat speedrun --preset gpu8
# the same, stage by stage:
#   python -m mini_nanochat data --corpus climbmix -n 170
#   python -m mini_nanochat tok-train --corpus climbmix --vocab-size 32768 --max-chars 2000000000 --name v32k
#   python -m mini_nanochat tok-eval --name v32k --corpus climbmix
#   torchrun --standalone --nproc_per_node=8 -m mini_nanochat base-train --depth 24 --max-seq-len 2048 --device-batch-size 16 --total-batch-size 524288 --corpus climbmix --tokenizer v32k --target-param-data-ratio 8 --model-tag speedrun-gpu8
#   torchrun --standalone --nproc_per_node=8 -m mini_nanochat base-eval --model-tag speedrun-gpu8
#   torchrun --standalone --nproc_per_node=8 -m mini_nanochat sft --model-tag speedrun-gpu8 --num-iterations 1500 --eval-questions 200
#   torchrun --standalone --nproc_per_node=8 -m mini_nanochat chat-eval --model-tag speedrun-gpu8
#   python -m mini_nanochat report --model-tag speedrun-gpu8
