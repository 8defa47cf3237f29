#!/usr/bin/env bash
# Retrain the shipped built-in model (hallufix/builtin/shapes_llava) from scratch, exactly as it was made: two
# stages of one deterministic schedule each (5,500 steps in all, 2 CPU threads, about 65 minutes on two idle
# cores), then the evaluation written into the final folder's training.json. Compare its "evaluation" with the
# shipped one (docs/builtin-model.md, "Measured").
#
#   bash scripts/train_builtin.sh [OUTPUT_DIR]      (default runs/train-builtin; the final model is OUTPUT_DIR/stage2)
set -euo pipefail
OUT="${1:-runs/train-builtin}"
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
# stage 1: from scratch, 4000 steps, seed 0, peak LR 2e-3, warm-up 200 (the script's defaults)
"$PY" -m hallufix.builtin.train --output "$OUT/stage1"
# stage 2: the schedule restarted at a lower peak on a new data stream (as the prototype's second half-hour)
"$PY" -m hallufix.builtin.train --init "$OUT/stage1" --steps 1500 --peak-lr 1e-3 --warmup 100 --seed 1 \
  --output "$OUT/stage2"
"$PY" -m hallufix.builtin.evaluate --model "$OUT/stage2" --write
