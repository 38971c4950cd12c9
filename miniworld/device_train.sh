#!/usr/bin/env bash
# Train every miniworld model on a GPU machine, measure quality there, pack results into $OUT.
# Usage: bash miniworld/device_train.sh [seconds from now after which the UNet stops]
set -euo pipefail
OUT=${OUT:-_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
W="--device cuda --workers 16"
DEADLINE=$(( $(date +%s) + ${1:-480} ))
python3 -m miniworld.train_vae $W
python3 -m miniworld.train_clip $W
tar czf "$OUT/pipeline_parts.tgz" miniworld/weights/pipeline/vae miniworld/weights/pipeline/text_encoder
python3 -m miniworld.train_classifier $W
tar czf "$OUT/eval_models.tgz" miniworld/weights/clip miniworld/weights/classifier miniworld/_train/*/loss.csv \
  miniworld/_train/*/summary.json
python3 -m miniworld.train_unet $W --deadline "$DEADLINE"
tar czf "$OUT/unet.tgz" miniworld/weights/pipeline/unet miniworld/weights/pipeline/scheduler \
  miniworld/weights/pipeline/model_index.json miniworld/_train/unet/loss.csv miniworld/_train/unet/summary.json
python3 -m miniworld.quality --device cuda --out "$OUT" || echo "quality failed"
