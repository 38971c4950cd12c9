"""Stage ``lora`` (per concept): rank-r attn2 to_k/to_v LoRA with the masked attention loss (spec Stage F).

The base it trains on is W0 * M_k (``independent``: the concept's own CFR) or W0 * M (``joint``: the set's
CFR, as the official code). The key holds only what this concept's training reads, so in independent mode
adding a concept to the set trains exactly one new LoRA.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from mace_core import cfr as core_cfr
from mace_core import lora as core_lora
from mace_core import unet_layers
from mace_core.concepts import Concept
from mace_core.config import LoraConfig, ModelConfig
from mace_core.seeds import concept_seed
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store, slot
from tasks.cfr import load_remap
from tasks.images import image_files, load_image_tensor
from tasks.prompts import load_pairs

STAGE, VERSION = "lora", "1"


@task(name="lora", task_run_name="lora-{concept.name}", **TASK_OPTIONS)
def lora_task(concept: Concept, seed: int, prompts: st.ArtifactRef, images: st.ArtifactRef,
              masks: st.ArtifactRef | None, base: st.ArtifactRef, cfg: LoraConfig, model: ModelConfig,
              model_digest: str, store_root: str, concurrency: int = 1) -> st.ArtifactRef:
    """Train concept k's LoRA on W0 * ``base`` (M_k or M); factors saved in diffusers-loadable safetensors."""
    store = open_store(store_root)
    seed_k = concept_seed(seed, concept.name)
    config = {"lora": cfg, "seed_k": seed_k, "dtype": model.dtype}
    inputs = {"model": model_digest, "prompts": prompts.digest, "images": images.digest,
              "masks": masks.digest if masks is not None else "", "base": base.digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        # 1. training data from the upstream artifacts
        pairs = load_pairs(store, prompts)
        data = core_lora.LoraTrainingData(
            images=load_image_tensor(image_files(store, images), 3),
            masks=load_image_tensor(image_files(store, masks), 1) if (masks is not None and cfg.use_masks) else None,
            prompts=[p.erased for p in pairs],
            targets=[p.target for p in pairs],
        )
        # 2. train on W0 * M (one of `concurrency` slots, each with its own model copy)
        with slot("lora", concurrency), lease_pipeline(model.path, model.dtype, model.device, concurrency) as pipe:
            W0 = unet_layers.get_projection_weights(pipe.unet)
            base_weights = core_cfr.refine_weights(W0, load_remap(store, base))
            factors = core_lora.train_concept_lora(pipe, base_weights, data, cfg, seed_k,
                                                   progress=lambda i, n, *a: rec.progress(i, n))
        # 3. publish
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            core_lora.save_lora(factors, out)
        get_run_logger().info("lora %s: trained %d steps (seed_k=%d)", concept.name, cfg.steps, seed_k)
        return finish(store, STAGE, key)


def load_factors(store: st.ArtifactStore, ref: st.ArtifactRef) -> core_lora.LoraFactors:
    return core_lora.load_lora(store.path(ref))
