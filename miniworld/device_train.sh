#!/usr/bin/env bash
# Train the miniworld models on a GPU machine in two calls of under 10 minutes each; results go to $OUT.
#   bash miniworld/device_train.sh parts            # VAE, CLIP, classifier, text sharpening (+ a UNet step-time probe)
#   bash miniworld/device_train.sh unet STEPS       # UNet (needs the parts in miniworld/weights), quality
# The same commands without --device cuda train on a CPU (see miniworld/weights/README.md).
set -euo pipefail
OUT=${OUT:-_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
W="--device cuda --workers 16"
case "$1" in
parts)
  python3 -m miniworld.train_vae $W
  python3 -m miniworld.train_clip $W > "$OUT/clip.log" 2>&1 &
  python3 -m miniworld.train_classifier $W > "$OUT/classifier.log" 2>&1
  wait
  python3 -m miniworld.sharpen_text $W --steps 1200
  python3 -m miniworld.sharpen_text $W --steps 1200 --tail-weight 1.0 --workdir miniworld/_train/sharpen_tail
  python3 -m miniworld.train_unet $W --steps 300 --batch-size 256 --lr 1e-3 --workdir /tmp/probe --out /tmp/probe_out
  cat /tmp/probe/loss.csv
  tar czf "$OUT/parts.tgz" miniworld/weights/pipeline/vae miniworld/weights/pipeline/text_encoder \
    miniworld/weights/clip miniworld/weights/classifier miniworld/_train/*/loss.csv miniworld/_train/*/summary.json
  ;;
unet)
  python3 -m miniworld.train_unet $W --steps "$2" --batch-size 256 --lr 1e-3 --attention-loss 0.05 \
    --mix identity=0.45,object=0.25,styled=0.1,pair=0.2 --deadline $(( $(date +%s) + ${3:-420} ))
  tar czf "$OUT/unet.tgz" miniworld/weights/pipeline/unet miniworld/weights/pipeline/scheduler \
    miniworld/weights/pipeline/model_index.json miniworld/_train/unet/loss.csv miniworld/_train/unet/summary.json
  python3 -m miniworld.quality --device cuda --out "$OUT" || echo "quality failed"
  ;;
esac
