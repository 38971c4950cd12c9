#!/usr/bin/env bash
# Train every miniworld model on a 2-core CPU (the budget the model card reports), in dependency order:
#   VAE || CLIP  ->  text-encoder sharpening  ->  classifier || UNet  -> quality.   Logs: miniworld/_train/*.log
# Usage: bash miniworld/train_all.sh [UNET_STEPS] [UNET_DEADLINE_UNIX_TIME]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
L=miniworld/_train
mkdir -p $L
PY=${PYTHON:-python}
$PY -c "from miniworld.training import corpus_images; import argparse; corpus_images(argparse.Namespace(corpus_limit=None, workers=2))"
$PY -m miniworld.train_vae --steps 2500 --batch-size 32 > $L/vae.log 2>&1 &
$PY -m miniworld.train_clip --steps 800 --batch-size 128 > $L/clip.log 2>&1
wait
$PY -m miniworld.sharpen_text --steps 1200 > $L/sharpen_text.log 2>&1
# the shipped classifier: 600 steps, then resumed from that checkpoint on a 1200-step schedule (warm restart)
($PY -m miniworld.train_classifier --steps 600 --batch-size 128 > $L/classifier_600.log 2>&1 &&
 $PY -m miniworld.train_classifier --steps 1200 --batch-size 128 > $L/classifier.log 2>&1) &
$PY -m miniworld.train_unet --steps "${1:-6000}" --batch-size 64 ${2:+--deadline $2} > $L/unet.log 2>&1
wait
$PY -m miniworld.quality --out miniworld/weights/quality > $L/quality.log 2>&1
