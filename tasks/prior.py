"""Stages ``captions``, ``prior_shard``, ``prior`` (general prior P) and ``domain_prior`` (D) -> zarr.

The caption corpus is frozen once into a ``captions`` artifact (parquet), then its Gram is accumulated
shard by shard (``prior.shard_size`` captions each, one artifact per shard), so a killed run resumes at
the first missing shard; ``prior`` sums the shards in index order (float64, deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import get_run_logger, task

from mace_core import captions as core_captions
from mace_core import text_stats as core_stats
from mace_core.config import ModelConfig, PriorConfig
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store

VERSION = "1"
CAPTIONS_VERSION = "2"  # 2: mace_core.captions (normalised exclusion, 'prompt' column first, whitespace collapsed)
EXCLUSION_VERSION = "1"
DOMAIN_VERSION = "2"  # 2: captions.domain_prompts (long retain entries are prompts, duplicates dropped)
CAPTIONS, COUNT, GRAM = "captions.parquet", "count.json", "gram.zarr"


# ---------------------------------------------------------------------------------------------------
# Caption files (reading, exclusion and digests are mace_core.captions; the maths is text_stats.prior_gram)
# ---------------------------------------------------------------------------------------------------


def caption_path(spec: str, field: str = "prior.captions") -> Path:
    """The caption file behind ``prior.captions`` ('miniworld' = the shipped corpus) or a ``prior.exclude`` entry.

    Raises FileNotFoundError naming ``field`` when the file does not exist (checked before any work).
    """
    if spec == "miniworld":
        from miniworld.paths import CAPTIONS_PATH

        return Path(CAPTIONS_PATH)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{field} file {spec!r} not found: give a COCO captions .json, .csv, .parquet or .txt file"
        )
    return p


def caption_source(cfg: PriorConfig) -> tuple[Path, frozenset[str]]:
    """The caption file and the normalised captions of the ``prior.exclude`` files (evaluation sets)."""
    src = caption_path(cfg.captions)
    excludes = [caption_path(x, "prior.exclude") for x in cfg.exclude]
    return src, core_captions.load_exclusions(excludes)


def _write_gram(out: Path, acc_gram: torch.Tensor, count: int) -> None:
    formats.save_arrays_zarr(out / GRAM, {"gram": acc_gram})
    (out / COUNT).write_text(json.dumps({"count": int(count)}))


def load_gram(store: st.ArtifactStore, ref: st.ArtifactRef | None) -> torch.Tensor | None:
    """The float64 Gram of a prior / domain_prior / prior_shard artifact (None for None)."""
    if ref is None:
        return None
    return torch.as_tensor(formats.load_arrays_zarr(store.path(ref) / GRAM)["gram"], dtype=torch.float64)


def load_count(store: st.ArtifactStore, ref: st.ArtifactRef) -> int:
    return int(json.loads((store.path(ref) / COUNT).read_text())["count"])


# ---------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------


@task(name="captions", task_run_name="captions", **TASK_OPTIONS)
def captions_task(cfg: PriorConfig, store_root: str) -> st.ArtifactRef:
    """Freeze the caption set (source minus captions of the ``exclude`` files, capped at ``max_captions``).

    Key input: ``captions.source_digest`` of the source bytes and the exclusion set (not the file names).
    """
    store = open_store(store_root)
    src, exclude = caption_source(cfg)
    config = {"max_captions": cfg.max_captions}
    inputs = {"source": core_captions.source_digest(src, exclude)}
    key = key_for("captions", CAPTIONS_VERSION, config, inputs)
    with cached_stage(store, "captions", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        captions = list(core_captions.read_captions(src, exclude, cfg.max_captions))
        with store.writer("captions", key, config=config, inputs=inputs, version=CAPTIONS_VERSION) as out:
            formats.save_table(out / CAPTIONS, {"caption": captions})
            (out / COUNT).write_text(json.dumps({"count": len(captions)}))
        get_run_logger().info("captions: %d (exclusion set of %d evaluation captions)", len(captions), len(exclude))
        return finish(store, "captions", key)


@task(name="prior-shard", task_run_name="prior-shard-{index}", **TASK_OPTIONS)
def prior_shard_task(captions: st.ArtifactRef, index: int, cfg: PriorConfig, model: ModelConfig,
                     text_digest: str, store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """Gram of captions ``[index * shard_size, (index + 1) * shard_size)``."""
    store = open_store(store_root)
    config = {"index": index, "shard_size": cfg.shard_size, "batch_size": cfg.batch_size, "dtype": model.dtype}
    inputs = {"captions": captions.digest, "text_encoder": text_digest}
    key = key_for("prior_shard", VERSION, config, inputs)
    with cached_stage(store, "prior_shard", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        table = formats.load_table(store.path(captions) / CAPTIONS).to_pydict()["caption"]
        chunk = table[index * cfg.shard_size: (index + 1) * cfg.shard_size]
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            acc = core_stats.prior_gram(pipe, chunk, batch_size=cfg.batch_size)
        with store.writer("prior_shard", key, config=config, inputs=inputs, version=VERSION) as out:
            _write_gram(out, acc.gram, acc.count)
        return finish(store, "prior_shard", key)


@task(name="prior", task_run_name="prior-merge", **TASK_OPTIONS)
def prior_merge_task(shards: list[st.ArtifactRef], store_root: str) -> st.ArtifactRef:
    """P = sum of the shard Grams in shard order (+ total token count)."""
    store = open_store(store_root)
    inputs = {f"shard/{i:06d}": s.digest for i, s in enumerate(shards)}
    key = key_for("prior", VERSION, {}, inputs)
    with cached_stage(store, "prior", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        gram = load_gram(store, shards[0]).clone()
        for s in shards[1:]:
            gram += load_gram(store, s)
        count = sum(load_count(store, s) for s in shards)
        with store.writer("prior", key, config={}, inputs=inputs, version=VERSION) as out:
            _write_gram(out, gram, count)
        get_run_logger().info("prior: %d shards, %d token vectors", len(shards), count)
        return finish(store, "prior", key)


@task(name="prior-exclusion", task_run_name="prior-exclusion", **TASK_OPTIONS)
def prior_exclusion_task(prior: st.ArtifactRef, captions: st.ArtifactRef, phrases: tuple[str, ...], cfg: PriorConfig,
                         model: ModelConfig, text_digest: str, store_root: str,
                         max_models: int = 1) -> st.ArtifactRef:
    """P minus the Gram of the frozen captions that name any of ``phrases`` (``prior.exclude_erased``).

    The Gram is a sum over captions, so this equals the Gram of the captions that name none of them, at the cost
    of encoding only those that do; the shards stay shared by every erase run. A ``prior`` artifact keyed by the
    phrase set, so the fusion and CFR read it like the full P."""
    store = open_store(store_root)
    config = {"exclude_phrases": sorted({" ".join(p.casefold().split()) for p in phrases}),
              "batch_size": cfg.batch_size, "dtype": model.dtype}
    inputs = {"prior": prior.digest, "captions": captions.digest, "text_encoder": text_digest}
    key = key_for("prior", EXCLUSION_VERSION, config, inputs)
    with cached_stage(store, "prior", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        table = formats.load_table(store.path(captions) / CAPTIONS).to_pydict()["caption"]
        pattern = core_captions.naming(phrases)
        named = [c for c in table if pattern.search(c)]
        gram, count = load_gram(store, prior), load_count(store, prior)
        if named:
            with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
                acc = core_stats.prior_gram(pipe, named, batch_size=cfg.batch_size)
            gram, count = gram - acc.gram, count - acc.count
        with store.writer("prior", key, config=config, inputs=inputs, version=EXCLUSION_VERSION) as out:
            _write_gram(out, gram, count)
        get_run_logger().info("prior: %d of %d captions name an erased concept, removed from P", len(named),
                              len(table))
        return finish(store, "prior", key)


def domain_prompts(retain: tuple[str, ...], concept_type: str) -> list[str]:
    """Prompts of the domain prior (``captions.domain_prompts``): a name (<= 4 words) in every template of the
    run's concept type, a longer entry kept as a prompt; duplicates dropped."""
    return core_captions.domain_prompts(list(retain), concept_type)


@task(name="domain-prior", task_run_name="domain-prior", **TASK_OPTIONS)
def domain_prior_task(cfg: PriorConfig, concept_type: str, model: ModelConfig, text_digest: str,
                      store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """D = Gram of the retain list's prompts (spec App. C.2 domain cache, rebuilt from names)."""
    store = open_store(store_root)
    config = {"retain": list(cfg.retain), "type": concept_type, "batch_size": cfg.batch_size,
              "dtype": model.dtype}
    inputs = {"text_encoder": text_digest}
    key = key_for("domain_prior", DOMAIN_VERSION, config, inputs)
    with cached_stage(store, "domain_prior", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            acc = core_stats.prior_gram(pipe, domain_prompts(cfg.retain, concept_type), cfg.batch_size)
        with store.writer("domain_prior", key, config=config, inputs=inputs, version=DOMAIN_VERSION) as out:
            _write_gram(out, acc.gram, acc.count)
        return finish(store, "domain_prior", key)
