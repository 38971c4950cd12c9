"""What every stage task shares: the store as the cache, a hit/miss ledger, one model per process.

The artifact store *is* the cache (DESIGN.md "Prefect's own result persistence is not the cache"): a task
computes its artifact key, returns the stored :class:`~tasks.store.ArtifactRef` on a hit, and only on a
miss calls ``mace_core``. Prefect caching is switched off for every task (``NO_CACHE``): its default
policy includes the run id and hashes tensors by identity (prefect_notes.md §1.6).

This module holds the process-level plumbing the thin tasks need:

- :class:`Ledger` / :data:`LEDGER`: one :class:`StageEvent` per task body (stage, concept, key, hit or miss,
  start/end times, flow run id). Flows summarise their own events; the CLI subscribes to draw progress.
- :func:`lease_pipeline`: a small pool of loaded pipelines keyed by (path, dtype, device). A process
  loads the model once and reuses it; model work is serialised on a lease so a LoRA training never
  runs on a UNet that another thread is sampling from. Pool size = ``execution.lora_concurrency``.
- :func:`model_dir`, :func:`files_digest`: base-model digests (hash of model_index.json + component files),
  computed once per process per directory state.
- :func:`is_transient`: the retry condition (never retry ValueError & co: bad input does not heal).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import NO_CACHE

from tasks.store import ArtifactCorrupt, ArtifactRef, ArtifactStore, artifact_key

__all__ = [
    "TASK_OPTIONS",
    "LEDGER",
    "Ledger",
    "StageEvent",
    "StageRecorder",
    "cached_stage",
    "files_digest",
    "is_transient",
    "lease_pipeline",
    "model_dir",
    "open_store",
]

# ----------------------------------------------------------------------------------------------------
# Retries: only on errors that can heal by themselves (I/O hiccups, OOM on a shared GPU, a killed child)
# ----------------------------------------------------------------------------------------------------

_PERMANENT = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, ArtifactCorrupt,
              NotImplementedError, ImportError, AttributeError)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a bad-input / bad-artifact error."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except BaseException:  # noqa: BLE001 - anything else (RuntimeError, OSError, OOM) may be transient
        return True
    return False


# Common @task options: the store is the cache, Prefect persists nothing.
TASK_OPTIONS: dict[str, Any] = dict(
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=is_transient,
)


@functools.lru_cache(maxsize=256)
def with_retries(task_fn: Any, retries: int, delay_s: float) -> Any:
    """``task_fn`` with a run's retry policy, built once per policy: ``Task.with_options`` re-reads and
    hashes the task's source (``inspect.getsource``), ~15 ms a call, a visible share of an all-hits rerun."""
    return task_fn.with_options(retries=retries, retry_delay_seconds=delay_s)


# ----------------------------------------------------------------------------------------------------
# Ledger of stage executions (hit/miss, timings)
# ----------------------------------------------------------------------------------------------------


@dataclass
class StageEvent:
    """One task body: which stage/concept, which key, whether the store already had it, and when."""

    stage: str
    concept: str | None
    key: str = ""
    hit: bool | None = None  # None while running / when it failed
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None
    scope: str | None = None  # the run (see RUN_SCOPE) this body belongs to
    error: str | None = None

    @property
    def seconds(self) -> float:
        return (self.end or time.perf_counter()) - self.start


class Ledger:
    """Thread-safe list of :class:`StageEvent` with listeners (the CLI's progress bars)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[StageEvent] = []
        self._listeners: list[Callable[[str, StageEvent, Mapping[str, Any]], None]] = []

    def add(self, event: StageEvent) -> None:
        with self._lock:
            self._events.append(event)
        self.emit("start", event)

    def emit(self, kind: str, event: StageEvent, **info: Any) -> None:
        for fn in list(self._listeners):
            try:
                fn(kind, event, info)
            except Exception:  # noqa: BLE001 - a progress display must never fail a stage
                logging.getLogger(__name__).warning("ledger listener failed", exc_info=True)

    def events(self, scope: str | None = None) -> list[StageEvent]:
        """All events, or those of one run scope."""
        with self._lock:
            evs = list(self._events)
        return evs if scope is None else [e for e in evs if e.scope == scope]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    @contextlib.contextmanager
    def listening(self, fn: Callable[[str, StageEvent, Mapping[str, Any]], None]) -> Iterator[None]:
        """Call ``fn(kind, event, info)`` for kind in start | progress | end while the block runs."""
        self._listeners.append(fn)
        try:
            yield
        finally:
            self._listeners.remove(fn)


LEDGER = Ledger()

# Set by a flow for its whole body; Prefect's thread pool copies contextvars into task threads, so every
# task body (and subflow) started by that flow records the same scope.
RUN_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mace_run_scope", default=None)


class StageRecorder:
    """Handle a task body uses to say hit/miss and report progress; see :func:`cached_stage`."""

    def __init__(self, event: StageEvent, store: ArtifactStore) -> None:
        self.event = event
        self.store = store
        self.ref: ArtifactRef | None = None

    def progress(self, done: int, total: int) -> None:
        LEDGER.emit("progress", self.event, done=done, total=total)


@contextlib.contextmanager
def cached_stage(store: ArtifactStore, stage: str, key: str, concept: str | None) -> Iterator[StageRecorder]:
    """Time one task body and record it; ``rec.ref`` is the stored artifact when it is a hit.

    Usage in a task::

        with cached_stage(store, "lora", key, concept.name) as rec:
            if rec.ref is not None:
                return rec.ref            # hit: no model work
            ... compute, write through store.writer ...
    """
    event = StageEvent(stage=stage, concept=concept, key=key, scope=RUN_SCOPE.get())
    LEDGER.add(event)
    rec = StageRecorder(event, store)
    try:
        rec.ref = store.get(stage, key, verify=True)  # raises ArtifactCorrupt on a tampered artifact
        event.hit = rec.ref is not None
        yield rec
    except BaseException as exc:
        event.hit = None
        event.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        event.end = time.perf_counter()
        LEDGER.emit("end", event)


# ----------------------------------------------------------------------------------------------------
# Store, config sections, keys
# ----------------------------------------------------------------------------------------------------

_STORES: dict[str, ArtifactStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(root: str) -> ArtifactStore:
    """One :class:`ArtifactStore` object per root per process."""
    with _STORES_LOCK:
        if root not in _STORES:
            _STORES[root] = ArtifactStore(root)
        return _STORES[root]


def key_for(stage: str, version: str, config: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """``artifact_key`` of (stage, version, the config values the stage reads, its input digests)."""
    return artifact_key(stage, version, config, dict(inputs))


def finish(store: ArtifactStore, stage: str, key: str) -> ArtifactRef:
    """The ref of an artifact the task has just published."""
    ref = store.get(stage, key, verify=False)
    if ref is None:  # pragma: no cover - the writer published it a moment ago
        raise RuntimeError(f"{stage}/{key}: artifact missing right after it was written")
    return ref


# ----------------------------------------------------------------------------------------------------
# Base model location and digests
# ----------------------------------------------------------------------------------------------------


def model_dir(path: str) -> Path:
    """Local directory of a diffusers pipeline: 'miniworld', a local dir, or a hub id already cached.

    Raises FileNotFoundError naming ``model.path`` when nothing usable is found (no download is tried).
    """
    if path == "miniworld":
        from miniworld.paths import PIPELINE_DIR

        return Path(PIPELINE_DIR)
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise FileNotFoundError(
                f"model.path {path!r} is a directory without model_index.json: "
                "point it at a diffusers pipeline directory (save_pretrained output)"
            )
        return p.resolve()
    if p.exists():
        raise NotADirectoryError(f"model.path {path!r} is a file: give a diffusers pipeline directory")
    if "/" in path and not path.startswith((".", "/", "~")) and path.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(path, local_files_only=True))
        except Exception:  # noqa: BLE001 - any hub failure means: not available offline
            pass
    raise FileNotFoundError(
        f"model.path {path!r} not found: give a local diffusers pipeline directory, 'miniworld', "
        "or a hub id already in the local Hugging Face cache"
    )


_DIGESTS: dict[tuple[str, tuple[str, ...], tuple[tuple[str, int, int], ...]], str] = {}
_DIGEST_LOCK = threading.Lock()


def files_digest(root: Path, subdirs: Sequence[str] | None = None) -> str:
    """sha256 over (relative path, file sha256) of model_index.json and the component folders' files.

    ``subdirs=None``: every component folder (the whole model). Otherwise only the named folder prefixes
    (e.g. ``("text_encoder", "tokenizer")`` also matches ``text_encoder_2``). Cached per process on
    (path, size, mtime) of every file, so a second run in the same process does not re-hash.
    """
    root = Path(root)
    files: list[Path] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root)
        top = rel.parts[0]
        if len(rel.parts) == 1:
            if top != "model_index.json" or subdirs is not None:
                continue
        elif top.startswith(".") or (subdirs is not None and not any(top.startswith(s) for s in subdirs)):
            continue
        files.append(p)
    stat_key = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    cache_key = (str(root.resolve()), tuple(subdirs or ()), stat_key)
    with _DIGEST_LOCK:
        if cache_key in _DIGESTS:
            return _DIGESTS[cache_key]
    h = hashlib.sha256()
    for p in files:
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                fh.update(block)
        h.update(json.dumps([str(p.relative_to(root).as_posix()), fh.hexdigest()]).encode())
    digest = h.hexdigest()
    with _DIGEST_LOCK:
        _DIGESTS[cache_key] = digest
    return digest


# ----------------------------------------------------------------------------------------------------
# One model per process: a small pool of leases
# ----------------------------------------------------------------------------------------------------


class _Pool:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.free: list[Any] = []
        self.n_loaded = 0
        self.base_weights: dict[str, Any] | None = None


_POOLS: dict[tuple[str, str, str], _Pool] = {}
_POOLS_LOCK = threading.Lock()
LOADS: list[tuple[str, str, str]] = []  # every load_pipeline call (tests assert "loaded once")


@contextlib.contextmanager
def lease_pipeline(path: str, dtype: str, device: str, max_instances: int = 1) -> Iterator[Any]:
    """Borrow a loaded pipeline for exclusive use; load it only when every instance is busy.

    At most ``max_instances`` copies exist per (path, dtype, device); with 1 (CPU default) the model is
    loaded once per process and model work is serialised. On return the UNet's cross-attention
    projections are reset to the base weights, so a task can never leak an edit into the next one.
    """
    from mace_core import models, unet_layers

    k = (path, dtype, device)
    with _POOLS_LOCK:
        pool = _POOLS.setdefault(k, _Pool())
    with pool.cond:
        while not pool.free and pool.n_loaded >= max_instances:
            pool.cond.wait()
        pipe = pool.free.pop() if pool.free else None
        if pipe is None:
            pool.n_loaded += 1
    if pipe is None:
        try:
            pipe = models.load_pipeline(path, dtype=dtype, device=device)
            LOADS.append(k)
        except BaseException:
            with pool.cond:
                pool.n_loaded -= 1
                pool.cond.notify()
            raise
        with pool.cond:
            if pool.base_weights is None:
                pool.base_weights = {
                    n: w.detach().clone() for n, w in unet_layers.get_projection_weights(pipe.unet).items()
                }
    try:
        yield pipe
    finally:
        unet_layers.apply_weights(pipe.unet, pool.base_weights)
        with pool.cond:
            pool.free.append(pipe)
            pool.cond.notify()


def clear_pipelines() -> None:
    """Forget every loaded pipeline (tests; frees memory)."""
    with _POOLS_LOCK:
        _POOLS.clear()


_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


@contextlib.contextmanager
def slot(name: str, limit: int) -> Iterator[None]:
    """In-process concurrency limit (e.g. ``slot("lora", cfg.execution.lora_concurrency)``)."""
    with _SLOTS_LOCK:
        sem = _SLOTS.setdefault((name, limit), threading.BoundedSemaphore(limit))
    with sem:
        yield


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
