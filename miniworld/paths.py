"""Where the shipped miniworld files live (all inside the package directory)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
WEIGHTS_DIR = ROOT / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"
CLIP_DIR = WEIGHTS_DIR / "clip"
# Worlds for the identity benchmark: the same chain with a 256- or 512-wide text encoder (TEXT_DIM=256 or 512
# TEXT_ONLY=1 bash miniworld/train_all.sh), sharing the shipped VAE and classifier. Not the default model.
TEXT256_WEIGHTS_DIR = ROOT / "weights_text256"
TEXT512_WEIGHTS_DIR = ROOT / "weights_text512"
DATA_DIR = ROOT / "data"
CAPTIONS_PATH = DATA_DIR / "captions.parquet"
HELDOUT_CAPTIONS_PATH = DATA_DIR / "heldout_captions.parquet"
# Ignored by git: rendered image caches and training checkpoints.
TRAIN_DIR = ROOT / "_train"
