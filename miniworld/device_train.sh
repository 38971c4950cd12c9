#!/usr/bin/env bash
# Train the miniworld models on a GPU machine and pack the results into $OUT (or ./_out).
# Usage: bash miniworld/device_train.sh components|unet   (components = VAE, CLIP, classifier)
set -euo pipefail
STAGE=$1
OUT=${OUT:-_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
W="--device cuda --workers 16"
if [ "$STAGE" = components ]; then
  python3 -m miniworld.train_vae $W
  python3 -m miniworld.train_clip $W
  python3 -m miniworld.train_classifier $W
  tar czf "$OUT/components.tgz" miniworld/weights/pipeline/vae miniworld/weights/pipeline/text_encoder \
    miniworld/weights/clip miniworld/weights/classifier miniworld/_train/*/loss.csv miniworld/_train/*/summary.json
else
  python3 -m miniworld.train_unet $W "${@:2}"
  tar czf "$OUT/unet.tgz" miniworld/weights/pipeline miniworld/_train/unet/loss.csv miniworld/_train/unet/summary.json
fi
