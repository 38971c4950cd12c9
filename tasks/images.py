"""Stage ``images`` (per concept): training images from the base model (spec Stage A) -> PNGs + record."""

from __future__ import annotations

import numpy as np
import torch
from prefect import get_run_logger, task

from mace_core import generate as core_generate
from mace_core.concepts import Concept
from mace_core.config import ImagesConfig, ModelConfig
from mace_core.seeds import concept_seed
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store

STAGE, VERSION = "images", "1"
RECORD = "images.parquet"


def generation_prompt(concept: Concept) -> str:
    """The official data-generation prompt (spec Stage A): styles get "in the style of"."""
    if concept.type == "style":
        return f"a photo in the style of {concept.name}"
    return f"a photo of the {concept.name}"


@task(name="images", task_run_name="images-{concept.name}", **TASK_OPTIONS)
def images_task(concept: Concept, seed: int, cfg: ImagesConfig, model: ModelConfig, model_digest: str,
                store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """``cfg.num_images`` images of ``concept``; image i uses seed ``concept_seed(seed, name) + i``."""
    store = open_store(store_root)
    seed_k = concept_seed(seed, concept.name)
    config = {"concept": {"name": concept.name, "type": concept.type}, "images": cfg,
              "dtype": model.dtype, "seed_k": seed_k}
    inputs = {"model": model_digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        prompt = generation_prompt(concept)
        seeds = [seed_k + i for i in range(cfg.num_images)]
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe, \
                store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            for start in range(0, cfg.num_images, cfg.batch_size):  # batch by batch, progress per batch
                batch = seeds[start:start + cfg.batch_size]
                images = core_generate.generate_images(
                    pipe, [prompt] * len(batch), batch, cfg.steps, cfg.guidance_scale, cfg.batch_size
                )
                for i, img in zip(range(start, start + len(batch)), images, strict=True):
                    formats.save_png(out / f"{i:04d}.png", img)
                rec.progress(start + len(batch), cfg.num_images)
            formats.save_table(out / RECORD, {"file": [f"{i:04d}.png" for i in range(cfg.num_images)],
                                         "prompt": [prompt] * cfg.num_images, "seed": seeds})
        get_run_logger().info("images %s: %d generated (seed_k=%d)", concept.name, cfg.num_images, seed_k)
        return finish(store, STAGE, key)


def image_files(store: st.ArtifactStore, ref: st.ArtifactRef) -> list:
    """Sorted PNG paths of an images (or masks) artifact."""
    return sorted(store.path(ref).glob("*.png"))


def load_image_tensor(paths: list, channels: int) -> torch.Tensor:
    """PNGs -> float [N, C, H, W]: RGB in [-1, 1] (channels=3, VAE convention) or masks in {0, 1} (channels=1)."""
    arrs = []
    for p in paths:
        img = formats.load_png(p).convert("RGB" if channels == 3 else "L")
        a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        arrs.append(a.permute(2, 0, 1) if channels == 3 else a[None])
    x = torch.stack(arrs)
    return x * 2.0 - 1.0 if channels == 3 else (x > 0.5).float()
