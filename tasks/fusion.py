"""Stage ``fusion`` (set): closed-form multi-LoRA fusion (paper Eq. 7) or the naive sum (Eq. 6) ->
final attn2 to_k/to_v weights (safetensors). Terms are taken in sorted concept order."""

from __future__ import annotations

from prefect import get_run_logger, task

from mace_core import cfr as core_cfr
from mace_core import fuse as core_fuse
from mace_core import unet_layers
from mace_core.config import FusionConfig, ModelConfig
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store
from tasks.cfr import load_remap
from tasks.lora import load_factors
from tasks.prior import load_gram
from tasks.stats import load_stats

STAGE, VERSION = "fusion", "1"
FILE = "weights.safetensors"


@task(name="fusion", task_run_name="fusion", **TASK_OPTIONS)
def fusion_task(remap: st.ArtifactRef, bases: dict[str, st.ArtifactRef], stats: dict[str, st.ArtifactRef],
                loras: dict[str, st.ArtifactRef], prior: st.ArtifactRef | None, domain: st.ArtifactRef | None,
                cfg: FusionConfig, model: ModelConfig, model_digest: str, store_root: str,
                max_models: int = 1) -> st.ArtifactRef:
    """W_fin for every cross-attention projection. ``bases[k]`` is M_k (independent) or M (joint)."""
    store = open_store(store_root)
    names = sorted(loras)
    inputs = {"model": model_digest, "remap": remap.digest, "prior": prior.digest if prior else "",
              "domain": domain.digest if domain else ""}
    for n in names:
        inputs |= {f"base/{n}": bases[n].digest, f"stats/{n}": stats[n].digest, f"lora/{n}": loras[n].digest}
    config = {"fusion": cfg, "dtype": model.dtype}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            W0 = unet_layers.get_projection_weights(pipe.unet)
        M = load_remap(store, remap)
        factors = [load_factors(store, loras[n]) for n in names]
        if cfg.method == "naive" or not names:  # no LoRAs (lora.enabled=false, "CFR only"): exactly W0·M
            weights = core_fuse.fuse_naive(W0, M, factors)
        else:
            concept_stats = [load_stats(store, stats[n]) for n in names]
            terms = [core_fuse.FusionTerm(load_remap(store, bases[n]), s.G, f,
                                          s.G_concept if cfg.lora_tokens == "concept" else None)
                     for n, s, f in zip(names, concept_stats, factors, strict=True)]
            K = core_cfr.prior_term(load_gram(store, prior), load_gram(store, domain), cfg.prior_weight,
                                    cfg.domain_weight, square_weight=False)
            weights = core_fuse.fuse_closed_form(W0, M, terms, K, cfg.lam)
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            formats.save_tensors(out / FILE, {k: v.contiguous() for k, v in weights.items()})
        get_run_logger().info("fusion (%s): %d concepts, %d projections", cfg.method, len(names), len(weights))
        return finish(store, STAGE, key)


def load_weights(store: st.ArtifactStore, ref: st.ArtifactRef) -> dict:
    return formats.load_tensors(store.path(ref) / FILE)
