"""Stage ``export`` (set): a complete diffusers pipeline directory with the fused weights + a model card."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from mace_core import export as core_export
from mace_core.config import ModelConfig
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store
from tasks.fusion import load_weights

STAGE, VERSION = "export", "1"
PIPELINE = "pipeline"


def model_card(card: dict[str, Any]) -> str:
    """A short README for the exported model: what was erased, into what, with which settings."""
    rows = "\n".join(f"| {c['name']} | {c['type']} | {c['mapping']} |" for c in card["concepts"])
    return (
        f"# {card['name']}: MACE concept-erased model\n\n"
        f"Base model: `{card['base']}` (digest `{card['model_digest'][:16]}`). Only the cross-attention "
        "`attn2.to_k` / `attn2.to_v` weights differ from the base.\n\n"
        "| erased concept | type | mapped to |\n|---|---|---|\n" + rows + "\n\n"
        f"LoRA base mode: `{card['lora_base']}`; fusion: `{card['fusion']}`.\n\n"
        "Produced by `mace erase` (MACE, CVPR 2024, re-implemented); the artifact manifests record every "
        "input and setting.\n"
    )


@task(name="export", task_run_name="export", **TASK_OPTIONS)
def export_task(fused: st.ArtifactRef, card: dict[str, Any], model: ModelConfig, model_digest: str,
                store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """``<artifact>/pipeline`` = ``save_pretrained`` of the base model with the fused weights applied."""
    store = open_store(store_root)
    config = {"card": card, "dtype": model.dtype}
    inputs = {"model": model_digest, "fusion": fused.digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        weights = load_weights(store, fused)
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe, \
                store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            core_export.export_pipeline(pipe, weights, out / PIPELINE)
            (out / PIPELINE / "README.md").write_text(model_card(card), encoding="utf-8")
        get_run_logger().info("export: %s", store.path(finish(store, STAGE, key)) / PIPELINE)
        return finish(store, STAGE, key)


def pipeline_dir(store: st.ArtifactStore, ref: st.ArtifactRef):
    return store.path(ref) / PIPELINE
