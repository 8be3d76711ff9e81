#!/usr/bin/env bash
# your own data: a folder of .txt / .jsonl ("text" field) / .parquet ("text" column) files becomes a corpus,
# gets its own tokenizer and its own model; SFT and the rest work as in the speedrun.
#   bash examples/own-data.sh ~/my-texts
set -euo pipefail
folder=${1:?usage: bash examples/own-data.sh FOLDER}
python -m mini_nanochat data --corpus "$folder" --name mytexts
python -m mini_nanochat tok-train --corpus mytexts --vocab-size 4096 --name mytexts
python -m mini_nanochat tok-eval --name mytexts --corpus mytexts
python -m mini_nanochat base-train --corpus mytexts --tokenizer mytexts --depth 4 --num-iterations 1000 --model-tag mytexts
python -m mini_nanochat base-eval --model-tag mytexts --max-per-task 50
python -m mini_nanochat sft --model-tag mytexts --num-iterations 800
python -m mini_nanochat chat --model-tag mytexts
