"""Stages ``cfr`` (the set's shared re-map M) and ``cfr_concept`` (M_k of one concept alone) -> safetensors.

M = (lam I + K + sum_k A_k)(lam I + K + sum_k B_k)^{-1}, K = prior term (spec Stage E). Statistics are
summed in sorted concept order, so the bytes of M do not depend on the order concepts were listed or added.
``cfr_concept`` is the base of concept k's LoRA in ``independent`` mode and depends on nothing but k.
"""

from __future__ import annotations

import torch
from prefect import get_run_logger, task

from mace_core import cfr as core_cfr
from mace_core.concepts import Concept
from mace_core.config import CFRConfig
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, open_store
from tasks.prior import load_gram
from tasks.stats import load_stats

VERSION = "1"
FILE = "remap.safetensors"


def _digest(ref: st.ArtifactRef | None) -> str:
    return ref.digest if ref is not None else ""


def _solve(store: st.ArtifactStore, stats: list[st.ArtifactRef], prior: st.ArtifactRef | None,
           domain: st.ArtifactRef | None, cfg: CFRConfig) -> torch.Tensor:
    total = sum((load_stats(store, r) for r in stats[1:]), load_stats(store, stats[0]))
    if not cfg.enabled:  # the "LoRA only" ablation: no closed-form refinement, M = I
        return torch.eye(total.A.shape[0], dtype=total.A.dtype)
    K = core_cfr.prior_term(load_gram(store, prior), load_gram(store, domain), cfg.prior_weight,
                            cfg.domain_weight, square_weight=cfg.square_prior_weight)
    return core_cfr.cfr_remap(total.A, total.B, K, cfg.lam)


def load_remap(store: st.ArtifactStore, ref: st.ArtifactRef) -> torch.Tensor:
    return formats.load_tensors(store.path(ref) / FILE)["M"]


@task(name="cfr", task_run_name="cfr-set", **TASK_OPTIONS)
def cfr_task(stats: dict[str, st.ArtifactRef], prior: st.ArtifactRef | None, domain: st.ArtifactRef | None,
             cfg: CFRConfig, store_root: str) -> st.ArtifactRef:
    """The shared re-map M of the whole concept set (keys of ``stats`` = concept keys)."""
    store = open_store(store_root)
    names = sorted(stats)
    inputs = {**{f"stats/{n}": stats[n].digest for n in names}, "prior": _digest(prior),
              "domain": _digest(domain)}
    key = key_for("cfr", VERSION, {"cfr": cfg}, inputs)
    with cached_stage(store, "cfr", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        M = _solve(store, [stats[n] for n in names], prior, domain, cfg)
        with store.writer("cfr", key, config={"cfr": cfg}, inputs=inputs, version=VERSION) as out:
            formats.save_tensors(out / FILE, {"M": M})
        get_run_logger().info("cfr: solved M for %d concepts", len(names))
        return finish(store, "cfr", key)


@task(name="cfr-concept", task_run_name="cfr-{concept.name}", **TASK_OPTIONS)
def cfr_concept_task(concept: Concept, stats: st.ArtifactRef, prior: st.ArtifactRef | None,
                     domain: st.ArtifactRef | None, cfg: CFRConfig, store_root: str) -> st.ArtifactRef:
    """M_k: the CFR of ``concept`` alone (+ priors), the LoRA base in independent mode."""
    store = open_store(store_root)
    inputs = {"stats": stats.digest, "prior": _digest(prior), "domain": _digest(domain)}
    key = key_for("cfr_concept", VERSION, {"cfr": cfg}, inputs)
    with cached_stage(store, "cfr_concept", key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        M = _solve(store, [stats], prior, domain, cfg)
        with store.writer("cfr_concept", key, config={"cfr": cfg}, inputs=inputs, version=VERSION) as out:
            formats.save_tensors(out / FILE, {"M": M})
        return finish(store, "cfr_concept", key)
