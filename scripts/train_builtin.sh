#!/usr/bin/env bash
# Retrain the shipped built-in model (hallufix/builtin/shapes_llava) from scratch, exactly as it was made: one
# deterministic schedule (the training module's defaults: seed 0, 6,000 steps, peak LR 2e-3, 2 CPU threads), then
# the evaluation written into the folder's training.json. Compare its "evaluation" with the shipped one
# (docs/builtin-model.md, "Measured").
#
#   bash scripts/train_builtin.sh [OUTPUT_DIR]      (default runs/train-builtin)
set -euo pipefail
OUT="${1:-runs/train-builtin}"
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
"$PY" -m hallufix.builtin.train --output "$OUT"
"$PY" -m hallufix.builtin.evaluate --model "$OUT" --write
