"""Stages ``captions``, ``prior_shard``, ``prior`` (general prior P) and ``domain_prior`` (D) -> zarr.

The caption corpus is frozen once into a ``captions`` artifact (parquet), then its Gram is accumulated
shard by shard (``prior.shard_size`` captions each, one artifact per shard), so a killed run resumes at
the first missing shard; ``prior`` sums the shards in index order (float64, deterministic).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from prefect import get_run_logger, task

from mace_core import prompts as core_prompts
from mace_core import text_stats as core_stats
from mace_core.config import ModelConfig, PriorConfig
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store

VERSION = "1"
CAPTIONS, COUNT, GRAM = "captions.parquet", "count.json", "gram.zarr"
_COLUMNS = ("caption", "prompt", "text")


# ---------------------------------------------------------------------------------------------------
# Caption files (I/O only; the maths is mace_core.text_stats.prior_gram)
# ---------------------------------------------------------------------------------------------------


def caption_path(spec: str) -> Path:
    """The caption file behind ``prior.captions`` ('miniworld' = the shipped corpus)."""
    if spec == "miniworld":
        from miniworld.paths import CAPTIONS_PATH

        return Path(CAPTIONS_PATH)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"prior.captions file {spec!r} not found: give a COCO captions .json, .csv, .parquet or .txt file"
        )
    return p


def read_captions(path: Path) -> list[str]:
    """Captions of a COCO annotations json, a list json, csv/parquet (column caption|prompt|text), txt."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "annotations" in data:
            return [a["caption"] for a in data["annotations"]]
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return data
        raise ValueError(f"prior.captions {str(path)!r}: expected COCO annotations or a list of strings")
    if suffix in (".csv", ".parquet"):
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        table = pq.read_table(path) if suffix == ".parquet" else pacsv.read_csv(path)
        for col in _COLUMNS:
            if col in table.column_names:
                return [str(x) for x in table.column(col).to_pylist()]
        raise ValueError(f"prior.captions {str(path)!r} has no column among {_COLUMNS}: rename its text column")
    if suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise ValueError(f"prior.captions {str(path)!r}: unsupported file type {suffix!r} (json, csv, parquet, txt)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_gram(out: Path, acc_gram: torch.Tensor, count: int) -> None:
    st.save_arrays_zarr(out / GRAM, {"gram": acc_gram})
    (out / COUNT).write_text(json.dumps({"count": int(count)}))


def load_gram(store: st.ArtifactStore, ref: st.ArtifactRef | None) -> torch.Tensor | None:
    """The float64 Gram of a prior / domain_prior / prior_shard artifact (None for None)."""
    if ref is None:
        return None
    return torch.as_tensor(st.load_arrays_zarr(store.path(ref) / GRAM)["gram"], dtype=torch.float64)


def load_count(store: st.ArtifactStore, ref: st.ArtifactRef) -> int:
    return int(json.loads((store.path(ref) / COUNT).read_text())["count"])


# ---------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------


@task(name="captions", task_run_name="captions", **TASK_OPTIONS)
def captions_task(cfg: PriorConfig, store_root: str) -> st.ArtifactRef:
    """Freeze the caption set (source minus ``exclude`` files, capped at ``max_captions``) into parquet."""
    store = open_store(store_root)
    src = caption_path(cfg.captions)
    excludes = [caption_path(x) for x in cfg.exclude]
    config = {"max_captions": cfg.max_captions}
    inputs = {"source": file_sha256(src), **{f"exclude/{i}": file_sha256(p) for i, p in enumerate(excludes)}}
    key = key_for("captions", VERSION, config, inputs)
    with cached_stage(store, "captions", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        drop = {c for p in excludes for c in read_captions(p)}
        captions = [c for c in read_captions(src) if c not in drop][: cfg.max_captions]
        if not captions:
            raise ValueError(f"prior.captions {cfg.captions!r} yields no captions after exclusions")
        with store.writer("captions", key, config=config, inputs=inputs, version=VERSION) as out:
            st.save_table(out / CAPTIONS, {"caption": captions})
            (out / COUNT).write_text(json.dumps({"count": len(captions)}))
        get_run_logger().info("captions: %d (%d excluded)", len(captions), len(drop))
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
        table = st.load_table(store.path(captions) / CAPTIONS).to_pydict()["caption"]
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


def domain_prompts(retain: tuple[str, ...], concept_type: str) -> list[str]:
    """Prompts of the domain prior: every retained name in every template of the run's concept type."""
    return [t.format(r) for r in retain for t in core_prompts.TEMPLATES[concept_type]]


@task(name="domain-prior", task_run_name="domain-prior", **TASK_OPTIONS)
def domain_prior_task(cfg: PriorConfig, concept_type: str, model: ModelConfig, text_digest: str,
                      store_root: str, max_models: int = 1) -> st.ArtifactRef:
    """D = Gram of the retain list's prompts (spec App. C.2 domain cache, rebuilt from names)."""
    store = open_store(store_root)
    config = {"retain": list(cfg.retain), "type": concept_type, "batch_size": cfg.batch_size,
              "dtype": model.dtype}
    inputs = {"text_encoder": text_digest}
    key = key_for("domain_prior", VERSION, config, inputs)
    with cached_stage(store, "domain_prior", key, None) as rec:
        if rec.ref is not None:
            return rec.ref
        with lease_pipeline(model.path, model.dtype, model.device, max_models) as pipe:
            acc = core_stats.prior_gram(pipe, domain_prompts(cfg.retain, concept_type), cfg.batch_size)
        with store.writer("domain_prior", key, config=config, inputs=inputs, version=VERSION) as out:
            _write_gram(out, acc.gram, acc.count)
        return finish(store, "domain_prior", key)
