#!/usr/bin/env bash
# Train every miniworld model on a 2-core CPU, the chain that produced the shipped weights, in dependency order:
#   VAE || CLIP (one thread each)  ->  text-encoder sharpening: subject words, then EOS-and-padding tails
#   ->  UNet from scratch  ->  classifier  ->  quality   (two threads each, one job at a time).
# Logs: miniworld/_train/*.log; the model card (python -m miniworld.model_card) sums the measured wall times.
# Usage: bash miniworld/train_all.sh [UNET_STEPS] [UNET_DEADLINE_UNIX_TIME]
# TEXT_DIM=256 trains a wider text encoder (default 128); TEXT_ONLY=1 keeps the VAE and the classifier in
# miniworld/weights (neither reads text) and retrains only the text side: CLIP, both sharpenings, UNet, quality.
# CKPT_EVERY=N checkpoints every N steps (default 1000): slow runs that a session's end may interrupt lose less.
# Rerunning the script skips each model that finished (its summary.json has the steps asked for) and resumes the
# others from their checkpoints (the batches depend on the step only); logs are appended to, never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
L=miniworld/_train
mkdir -p $L
PY=${PYTHON:-python}
CK=(${CKPT_EVERY:+--ckpt-every "$CKPT_EVERY"})
one() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$@"; }
two() { OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "$@"; }
two $PY -c "from miniworld.training import corpus_images; import argparse; corpus_images(argparse.Namespace(corpus_limit=None, workers=2))"
CLIP=(-m miniworld.train_clip --steps 800 --batch-size 128 --text-dim "${TEXT_DIM:-128}" "${CK[@]}")
if [ -n "${TEXT_ONLY:-}" ]; then
  two $PY "${CLIP[@]}" >> $L/clip.log 2>&1
else
  one $PY -m miniworld.train_vae --steps 2500 --batch-size 32 "${CK[@]}" >> $L/vae.log 2>&1 &
  one $PY "${CLIP[@]}" >> $L/clip.log 2>&1
  wait
fi
two $PY -m miniworld.sharpen_text --steps 1200 "${CK[@]}" >> $L/sharpen_text.log 2>&1
two $PY -m miniworld.sharpen_text --steps 1200 --tail-weight 1.0 "${CK[@]}" --workdir $L/sharpen_tail \
  >> $L/sharpen_tail.log 2>&1
two $PY -m miniworld.train_unet --steps "${1:-11000}" --batch-size 64 --attention-loss 0.05 \
  --mix identity=0.45,object=0.25,styled=0.1,pair=0.2 ${2:+--deadline $2} "${CK[@]}" >> $L/unet.log 2>&1
[ -n "${TEXT_ONLY:-}" ] ||
  two $PY -m miniworld.train_classifier --steps 1800 --batch-size 128 --workers 2 "${CK[@]}" >> $L/classifier.log 2>&1
two $PY -m miniworld.quality --out miniworld/weights/quality >> $L/quality.log 2>&1
