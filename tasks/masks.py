"""Stage ``masks`` (per concept): concept masks of the training images (spec Stage B) -> PNG 0/255.

Backends (``masks.backend``):

- ``none``: the flow skips the stage (the LoRA loss covers the whole image);
- ``attention``: the model's own cross-attention (``mace_core.masks.attention_masks``), no extra weights;
- ``grounded_sam``: GroundingDINO boxes for the concept phrase, SAM masks inside them
  (``mace_core.grounded_sam``), from the checkpoints named in ``masks.*``. The masker is loaded once per
  process (and reused by every concept while the checkpoints stay the same); the key holds the sha256 of
  every checkpoint file instead of its path, so moving a checkpoint keeps the cache. The artifact also holds
  ``detections.parquet`` (boxes, scores, outcome per image) and ``preview/<image>.png`` (mask tinted over the
  image, boxes outlined, for the UI). ``on_empty='skip'`` writes an all-zero mask for an image with no
  detection, so it adds nothing to the masked attention loss while images and masks stay aligned by name.

Style concepts never get masks (spec §6.5: the official art runs use none). Readers of a masks artifact take
the top-level ``*.png`` files only (``tasks.images.image_files``), never ``preview/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from prefect import get_run_logger, task

from mace_core import masks as core_masks
from mace_core.concepts import Concept
from mace_core.config import MasksConfig, ModelConfig
from mace_core.seeds import concept_seed
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store
from tasks.images import RECORD, image_files, load_image_tensor

STAGE, VERSION = "masks", "1"
BACKENDS = ("none", "attention", "grounded_sam")
DETECTIONS = "detections.parquet"
PREVIEW_DIR = "preview"
# GroundingDINO's shorter-side input size (800 as trained). Part of the grounded_sam key; tests lower it.
DINO_SIZE = 800
# Files (and the one directory) of the grounded_sam backend, by config field.
GSAM_FILES = ("groundingdino_config", "groundingdino_checkpoint", "sam_checkpoint")
GSAM_DIRS = ("groundingdino_text_encoder",)


def uses_masks(concept: Concept, cfg: MasksConfig) -> bool:
    """Whether ``concept`` gets a masks stage."""
    return cfg.backend != "none" and concept.type != "style"


# ----------------------------------------------------------------------------------------------------
# grounded_sam: inputs, digests, one masker per process
# ----------------------------------------------------------------------------------------------------


def bundled_groundingdino_config() -> Path | None:
    """The SwinT-OGC config that ships with ``groundingdino-py`` (matches ``groundingdino_swint_ogc.pth``)."""
    spec = importlib.util.find_spec("groundingdino")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "config" / "GroundingDINO_SwinT_OGC.py"
    return path if path.is_file() else None


def grounded_sam_paths(cfg: MasksConfig) -> dict[str, Path]:
    """The grounded_sam inputs by config field, checked to exist (cheap: no file is read).

    ``masks.groundingdino_config`` may be left unset: the SwinT-OGC config bundled with groundingdino-py.

    Raises:
        ValueError: a required field is unset (one line naming it).
        FileNotFoundError: a path does not exist (one line naming the field and the path).
    """
    paths: dict[str, Path] = {}
    for field in (*GSAM_FILES, *GSAM_DIRS):
        value = getattr(cfg, field)
        if value is None and field == "groundingdino_config":
            bundled = bundled_groundingdino_config()
            if bundled is None:
                raise ValueError("masks.groundingdino_config is unset and groundingdino-py is not installed: "
                                 "pip install groundingdino-py, or give the GroundingDINO config .py path")
            paths[field] = bundled
            continue
        if not value:
            raise ValueError(f"masks.backend='grounded_sam' needs masks.{field}: set it to the local path of "
                             f"the {_WHAT[field]}")
        p = Path(value).expanduser()
        if field in GSAM_DIRS:
            if not (p / "config.json").is_file():
                raise FileNotFoundError(f"masks.{field} {value!r} not found (no config.json in that directory): "
                                        f"give the local directory of the {_WHAT[field]}")
        elif not p.is_file():
            raise FileNotFoundError(f"masks.{field} {value!r} not found: give the local path of the {_WHAT[field]}")
        paths[field] = p
    return paths


_WHAT = {
    "groundingdino_config": "GroundingDINO config (.py), e.g. GroundingDINO_SwinT_OGC.py",
    "groundingdino_checkpoint": "GroundingDINO weights, e.g. groundingdino_swint_ogc.pth",
    "groundingdino_text_encoder": "BERT model + tokenizer GroundingDINO uses (a saved bert-base-uncased)",
    "sam_checkpoint": "SAM / SAM-HQ weights, e.g. sam_vit_h_4b8939.pth",
}

_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def file_digest(path: Path) -> str:
    """sha256 of a file, cached per process on (path, size, mtime): a checkpoint is hashed once per process."""
    stat = path.stat()
    k = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _DIGEST_LOCK:
        if k in _DIGESTS:
            return _DIGESTS[k]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    with _DIGEST_LOCK:
        _DIGESTS[k] = h.hexdigest()
    return _DIGESTS[k]


def dir_digest(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every file under ``root`` (hidden entries skipped)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(json.dumps([rel.as_posix(), file_digest(p)]).encode())
    return h.hexdigest()


def grounded_sam_digests(paths: dict[str, Path]) -> dict[str, str]:
    """Input digests of the grounded_sam key: one per config field (contents, never paths)."""
    return {f: dir_digest(p) if f in GSAM_DIRS else file_digest(p) for f, p in paths.items()}


_MASKER: dict[tuple, Any] = {}  # at most one loaded masker per process
_MASKER_LOCK = threading.Lock()
MASKER_LOADS: list[tuple] = []  # every GroundedSam.load (tests assert "loaded once")


@contextlib.contextmanager
def lease_masker(cfg: MasksConfig, paths: dict[str, Path], digests: dict[str, str], device: str) -> Iterator[Any]:
    """Exclusive use of the process's GroundedSam for these checkpoints (loaded on first use, then kept)."""
    from mace_core import grounded_sam as gs

    k = (tuple(sorted(digests.items())), cfg.sam_model_type, device, DINO_SIZE)
    with _MASKER_LOCK:
        masker = _MASKER.get(k)
        if masker is None:
            _MASKER.clear()  # other checkpoints: free them before loading these
            masker = gs.GroundedSam.load(
                paths["groundingdino_config"], paths["groundingdino_checkpoint"], paths["groundingdino_text_encoder"],
                paths["sam_checkpoint"], cfg.sam_model_type, device=device, dino_size=DINO_SIZE,
            )
            _MASKER[k] = masker
            MASKER_LOADS.append(k)
        yield masker


def clear_maskers() -> None:
    """Forget the loaded masker (tests; frees memory)."""
    with _MASKER_LOCK:
        _MASKER.clear()


# ----------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------


@task(name="masks", task_run_name="masks-{concept.name}", **TASK_OPTIONS)
def masks_task(concept: Concept, seed: int, images: st.ArtifactRef, cfg: MasksConfig, model: ModelConfig,
               model_digest: str, store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """One mask PNG per training image (same file names), 255 = concept pixels."""
    store = open_store(store_root)
    if cfg.backend == "grounded_sam":
        return _grounded_sam_masks(store, concept, images, cfg, model)
    if cfg.backend != "attention":
        raise ValueError(f"masks.backend={cfg.backend!r} has no masks stage: use one of {BACKENDS}")
    seed_k = concept_seed(seed, concept.name)
    config = {"concept": concept.name, "masks": cfg, "dtype": model.dtype, "seed_k": seed_k}
    inputs = {"images": images.digest, "model": model_digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        files = image_files(store, images)
        x = load_image_tensor(files, 3)
        prompts = formats.load_table(store.path(images) / RECORD).to_pydict()["prompt"]
        generator = torch.Generator("cpu").manual_seed(seed_k)
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            masks = core_masks.attention_masks(pipe, x, prompts, [concept.name] * len(files), generator,
                                               threshold=cfg.attention_threshold)
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            for p, m in zip(files, masks, strict=True):
                formats.save_png(out / p.name, Image.fromarray((m[0].numpy() > 0.5).astype(np.uint8) * 255, "L"))
        get_run_logger().info("masks %s: %d masks, mean area %.2f", concept.name, len(files),
                              float(masks.float().mean()))
        return finish(store, STAGE, key)


def _grounded_sam_masks(store: st.ArtifactStore, concept: Concept, images: st.ArtifactRef, cfg: MasksConfig,
                        model: ModelConfig) -> st.ArtifactRef:
    """The grounded_sam backend: masks + detection record + overlay previews, keyed by checkpoint digests."""
    from mace_core import grounded_sam as gs

    # 1. key: the fields this backend reads (no paths) + the digests of the images and every checkpoint
    paths = grounded_sam_paths(cfg)
    digests = grounded_sam_digests(paths)
    config = {"concept": concept.name, "dino_size": DINO_SIZE,
              "masks": {"backend": cfg.backend, "box_threshold": cfg.box_threshold,
                        "text_threshold": cfg.text_threshold, "on_empty": cfg.on_empty,
                        "sam_model_type": cfg.sam_model_type}}
    inputs = {"images": images.digest, **digests}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        # 2. detect + segment every image with the process's masker
        files = image_files(store, images)
        pil = [formats.load_png(p).convert("RGB") for p in files]
        with lease_masker(cfg, paths, digests, model.device) as masker:
            masks, detections = masker.masks(pil, concept.name, cfg.box_threshold, cfg.text_threshold,
                                             cfg.on_empty)
        if all(m is None for m in masks):
            raise ValueError(
                f"masks: no {concept.name!r} detected in any of its {len(files)} images with masks.on_empty='skip': "
                "lower masks.box_threshold or use masks.on_empty='full'"
            )
        # 3. publish: masks (same names as the images), previews, detection record
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            (out / PREVIEW_DIR).mkdir()
            for p, img, m, det in zip(files, pil, masks, detections, strict=True):
                mask = m if m is not None else np.zeros((img.height, img.width), dtype=bool)
                formats.save_png(out / p.name, mask)
                formats.save_png(out / PREVIEW_DIR / p.name, gs.overlay_preview(img, m, det))
            formats.save_table(out / DETECTIONS, {
                "file": [p.name for p in files],
                "outcome": [d.outcome for d in detections],
                "n_boxes": [d.n_boxes for d in detections],
                "scores": [json.dumps(list(d.scores)) for d in detections],
                "boxes_xyxy": [json.dumps([list(b) for b in d.boxes_xyxy]) for d in detections],
                "phrases": [json.dumps(list(d.phrases)) for d in detections],
                "area": [float(m.mean()) if m is not None else 0.0 for m in masks],
            })
        outcomes = {o: sum(d.outcome == o for d in detections) for o in ("detected", "full", "skipped")}
        get_run_logger().info("masks %s (grounded_sam): %d images, %s", concept.name, len(files), outcomes)
        return finish(store, STAGE, key)


def load_detections(store: st.ArtifactStore, ref: st.ArtifactRef) -> list[dict[str, Any]]:
    """The detection record of a grounded_sam masks artifact (JSON columns decoded); [] for other backends."""
    path = store.path(ref) / DETECTIONS
    if not path.is_file():
        return []
    rows = formats.load_table(path)
    return [{**r, **{c: json.loads(r[c]) for c in ("scores", "boxes_xyxy", "phrases")}} for r in rows]


def preview_files(store: st.ArtifactStore, ref: st.ArtifactRef) -> list[Path]:
    """Sorted overlay previews (``preview/*.png``) of a masks artifact; [] when it has none."""
    return sorted((store.path(ref) / PREVIEW_DIR).glob("*.png"))
