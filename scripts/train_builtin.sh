#!/usr/bin/env bash
# Retrain the shipped built-in model (hallufix/builtin/shapes_llava) from scratch, exactly as it was made:
# three stages of one deterministic schedule each (6,500 steps in all, 2 CPU threads, about 80 minutes on two
# cores), then the evaluation written into the final folder's training.json. Compare its figures with the shipped
# ones: python -m hallufix.builtin.evaluate prints the same keys.
#
#   bash scripts/train_builtin.sh [OUTPUT_DIR]      (default runs/train-builtin; the final model is OUTPUT_DIR/stage3)
set -euo pipefail
OUT="${1:-runs/train-builtin}"
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
# stage 1: from scratch, 4000 steps, peak LR 2e-3 (the script's defaults)
"$PY" -m hallufix.builtin.train --output "$OUT/stage1"
# stage 2: schedule restarted at a lower peak (as the prototype's second half-hour), a new data stream
"$PY" -m hallufix.builtin.train --init "$OUT/stage1" --steps 1500 --peak-lr 1e-3 --warmup 100 --seed 1 \
  --output "$OUT/stage2"
# stage 3: half of the existence negatives ask about an absent colour twin of a present object, so the model has
# to tell shapes apart instead of answering from colour (stage 2 said "yes" to 54% of colour twins)
"$PY" -m hallufix.builtin.train --init "$OUT/stage2" --steps 1000 --peak-lr 5e-4 --warmup 50 --seed 2 \
  --twin-negatives 0.5 --output "$OUT/stage3"
"$PY" -m hallufix.builtin.evaluate --model "$OUT/stage3" --write
