"""Stage ``stats`` (per concept): sufficient statistics A_k, B_k, G_k, G_k^c (spec §3.2) -> zarr float64."""

from __future__ import annotations

import json

import torch
from prefect import get_run_logger, task

from mace_core import text_stats as core_stats
from mace_core.concepts import Concept
from mace_core.config import ModelConfig
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store
from tasks.prompts import load_pairs

STAGE, VERSION = "stats", "2"  # 2: adds G_concept
ARRAYS, COUNTS = "stats.zarr", "counts.json"
BATCH_SIZE = 32


@task(name="stats", task_run_name="stats-{concept.name}", **TASK_OPTIONS)
def stats_task(concept: Concept, prompts: st.ArtifactRef, model: ModelConfig, text_digest: str,
               store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """Encode the concept's prompt pairs once and keep only the three [d, d] sums (never embeddings)."""
    store = open_store(store_root)
    config = {"dtype": model.dtype, "batch_size": BATCH_SIZE}
    inputs = {"text_encoder": text_digest, "prompts": prompts.digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        pairs = load_pairs(store, prompts)
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            stats = core_stats.concept_statistics_from_pipeline(pipe, pairs, batch_size=BATCH_SIZE)
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            formats.save_arrays_zarr(out / ARRAYS, {"A": stats.A, "B": stats.B, "G": stats.G,
                                                 "G_concept": stats.G_concept})
            (out / COUNTS).write_text(json.dumps(
                {"n_pairs": stats.n_pairs, "n_matched": stats.n_matched, "n_tokens": stats.n_tokens}))
        get_run_logger().info("stats %s: %d pairs, %d matched tokens", concept.name, stats.n_pairs,
                              stats.n_matched)
        return finish(store, STAGE, key)


def load_stats(store: st.ArtifactStore, ref: st.ArtifactRef) -> core_stats.ConceptStats:
    """Read a stats artifact back as a float64 ``ConceptStats``."""
    arrays = formats.load_arrays_zarr(store.path(ref) / ARRAYS)
    counts = json.loads((store.path(ref) / COUNTS).read_text())
    t = {k: torch.as_tensor(arrays[k], dtype=torch.float64) for k in ("A", "B", "G", "G_concept")}
    return core_stats.ConceptStats(t["A"], t["B"], t["G"], t["G_concept"], **counts)
