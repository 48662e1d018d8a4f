#!/usr/bin/env bash
# Base vs abliterated embedded model on every suite (results/compare-embedded/).
#   bash experiments/compare_embedded.sh [DATA_DIR]
# The abliterated checkpoint is rebuilt from the committed direction (results/abliterate-embedded/);
# per-item caches ($STEER_CACHE/eval) make a re-run after an interruption resume where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
mkdir -p runs
steer edit --directions results/abliterate-embedded/directions.safetensors --out runs/abliterated --force
steer compare embedded runs/abliterated --suite all --data-dir "$DATA" \
  --limit mmlu=2850,gsm8k=100,math500=50,aime24=15,aime25=15 --batch-size 16 --seed 0 \
  --out results/compare-embedded --force
