"""Where the shipped miniworld files live (all inside the package directory)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
WEIGHTS_DIR = ROOT / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"
CLIP_DIR = WEIGHTS_DIR / "clip"
DATA_DIR = ROOT / "data"
CAPTIONS_PATH = DATA_DIR / "captions.parquet"
HELDOUT_CAPTIONS_PATH = DATA_DIR / "heldout_captions.parquet"
# Ignored by git: rendered image caches and training checkpoints.
TRAIN_DIR = ROOT / "_train"
