"""Flow ``mace-train-lora``: one concept's LoRA, as its own flow run on a (GPU) worker.

The GPU child of ``mace-erase`` (prefect_notes.md §2.3). The parent's :func:`tasks.remote.remote_lora_task`
starts it with ``run_deployment("mace-train-lora/<name>")``; every parameter is small and JSON-able (the
concept, the ``lora``/``model`` config sections as dicts, the upstream artifacts as ``"<stage>/<key>"`` ids
and the store URL), so the deployment's parameter schema validates a run before any worker picks it up.

The flow is wiring: resolve the refs from the shared store, take a GPU slot (a global concurrency limit,
when ``gpu_limit`` names one) and run the very same :func:`tasks.lora.lora_task` the in-process path runs,
so the artifact key and bytes are identical; a store hit is a no-op. It returns the artifact ref id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect import flow, get_run_logger

from mace_core.concepts import Concept
from mace_core.config import LoraConfig, ModelConfig
from tasks import store as st
from tasks._cache import open_store
from tasks.lora import lora_task


def resolve_ref(store: st.ArtifactStore, ref_id: str, what: str) -> st.ArtifactRef:
    """The stored ref of ``"<stage>/<key>"``; a one-line error naming the parameter when it is absent."""
    stage, sep, key = ref_id.partition("/")
    if not sep:
        raise ValueError(f"parameter {what}={ref_id!r} is not an artifact id: expected '<stage>/<key>'")
    ref = store.get(stage, key, verify=True)
    if ref is None:
        raise ValueError(f"parameter {what}={ref_id!r}: no such artifact in {store.root_url}; the parent must "
                         "write upstream artifacts to the same shared store (execution.store) the worker reads")
    return ref


@contextlib.contextmanager
def gpu_slot(limit_name: str | None) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``limit_name`` (strict: it must exist); no-op for None."""
    if not limit_name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit_name, occupy=1, strict=True):
        yield


@flow(name="mace-train-lora", flow_run_name="lora-{concept.name}", persist_result=False, retries=0)
def train_lora(concept: Concept, seed: int, prompts: str, images: str, masks: str | None, base: str,
               lora: LoraConfig, model: ModelConfig, model_digest: str, store: str,
               gpu_limit: str | None = None) -> str:
    """Train (or find) ``concept``'s LoRA on W0·``base``; returns ``"lora/<key>"``.

    Parameters: ``concept`` {name, type, mapping, synonyms}; ``seed`` the run's global seed (seed_k is
    derived from it and the concept name); ``prompts``/``images``/``masks``/``base`` upstream artifact ids
    (``masks`` may be null); ``lora``/``model`` the config sections; ``model_digest`` the base model's
    files digest (the worker must see the same model directory ``model.path``); ``store`` the shared
    artifact store URL; ``gpu_limit`` a global concurrency limit to take one slot of (``null``: none).
    """
    log = get_run_logger()
    # 1. open the shared store and resolve the upstream artifacts (fails fast with the parameter's name)
    s = open_store(store)
    refs = {name: resolve_ref(s, rid, name) for name, rid in
            (("prompts", prompts), ("images", images), ("base", base)) if rid is not None}
    mask_ref = resolve_ref(s, masks, "masks") if masks else None
    # 2. one GPU slot, then the same task as the in-process path (a store hit returns at once)
    with gpu_slot(gpu_limit):
        ref = lora_task.with_options(retries=0)(concept, seed, refs["prompts"], refs["images"], mask_ref,
                                                refs["base"], lora, model, model_digest, store, 1)
    log.info("lora %s -> %s", concept.name, ref.id)
    return ref.id
