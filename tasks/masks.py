"""Stage ``masks`` (per concept): concept masks of the training images (spec Stage B) -> PNG 0/255.

Backends (``masks.backend``): ``none`` (the flow skips the stage; the LoRA loss covers the whole image) and
``attention`` (the model's own cross-attention, ``mace_core.masks.attention_masks``, no extra weights).
Style concepts never get masks (spec §6.5: the official art runs use none).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from prefect import get_run_logger, task

from mace_core import masks as core_masks
from mace_core.concepts import Concept
from mace_core.config import MasksConfig, ModelConfig
from mace_core.seeds import concept_seed
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store
from tasks.images import RECORD, image_files, load_image_tensor

STAGE, VERSION = "masks", "1"
BACKENDS = ("none", "attention")  # grounded_sam: no checkpoints can be shipped; see docs/CONFIG.md


def uses_masks(concept: Concept, cfg: MasksConfig) -> bool:
    """Whether ``concept`` gets a masks stage."""
    return cfg.backend != "none" and concept.type != "style"


@task(name="masks", task_run_name="masks-{concept.name}", **TASK_OPTIONS)
def masks_task(concept: Concept, seed: int, images: st.ArtifactRef, cfg: MasksConfig, model: ModelConfig,
               model_digest: str, store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """One mask PNG per training image (same file names), 255 = concept pixels."""
    store = open_store(store_root)
    seed_k = concept_seed(seed, concept.name)
    config = {"concept": concept.name, "masks": cfg, "dtype": model.dtype, "seed_k": seed_k}
    inputs = {"images": images.digest, "model": model_digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        if cfg.backend != "attention":
            raise ValueError(f"masks.backend={cfg.backend!r} is not available: use one of {BACKENDS}")
        files = image_files(store, images)
        x = load_image_tensor(files, 3)
        prompts = st.load_table(store.path(images) / RECORD).to_pydict()["prompt"]
        generator = torch.Generator("cpu").manual_seed(seed_k)
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            masks = core_masks.attention_masks(pipe, x, prompts, [concept.name] * len(files), generator,
                                               threshold=cfg.attention_threshold)
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            for p, m in zip(files, masks, strict=True):
                st.save_png(out / p.name, Image.fromarray((m[0].numpy() > 0.5).astype(np.uint8) * 255, "L"))
        get_run_logger().info("masks %s: %d masks, mean area %.2f", concept.name, len(files),
                              float(masks.float().mean()))
        return finish(store, STAGE, key)
