"""Flow ``mace-erase``: a concept list -> a concept-erased diffusers model (DESIGN.md stages).

The flow is wiring only: every step is a cached task over the artifact store, so a second run of the same
config is all store hits, and a grown concept set recomputes only what the new concept changes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from mace_core.concepts import Concept
from mace_core.config import MaceConfig
from mace_core.prompts import TEMPLATES
from tasks import dashboards
from tasks._cache import LEDGER, RUN_SCOPE, StageEvent, files_digest, model_dir, open_store, with_retries
from tasks.cfr import cfr_concept_task, cfr_task
from tasks.export import export_task, pipeline_dir
from tasks.fusion import fusion_task
from tasks.images import images_task
from tasks.masks import BACKENDS, grounded_sam_paths, masks_task, uses_masks
from tasks.prior import caption_path
from tasks.prompts import prompts_task
from tasks.remote import lora_runner
from tasks.stats import stats_task

# Stage order for reports (set stages after per-concept ones).
STAGES = ("captions", "prior_shard", "prior", "domain_prior", "prompts", "images", "masks", "stats",
          "cfr_concept", "cfr", "lora", "fusion", "export")



# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


@dataclass
class StageRow:
    stage: str
    hits: int = 0
    misses: int = 0
    seconds: float = 0.0


@dataclass
class RunReport:
    """What a run did: its concepts, output, and per-stage cache hits/misses and body time."""

    run_id: str
    concepts: list[str]
    output: str
    refs: dict[str, str]
    stages: list[StageRow] = field(default_factory=list)
    wall_s: float = 0.0  # flow body wall time
    busy_s: float = 0.0  # union of task-body intervals (time inside task bodies)
    concept_stages: dict[str, dict[str, str]] = field(default_factory=dict)  # concept -> stage -> hit|miss|...

    @property
    def hits(self) -> int:
        return sum(r.hits for r in self.stages)

    @property
    def misses(self) -> int:
        return sum(r.misses for r in self.stages)

    def row(self, stage: str) -> StageRow:
        return next((r for r in self.stages if r.stage == stage), StageRow(stage))


def summarise(events: list[StageEvent]) -> tuple[list[StageRow], float]:
    """Per-stage hit/miss counts and body seconds, plus the union length of all body intervals."""
    rows: dict[str, StageRow] = {}
    for e in events:
        row = rows.setdefault(e.stage, StageRow(e.stage))
        row.hits += e.hit is True
        row.misses += e.hit is False
        row.seconds += e.seconds
    order = {s: i for i, s in enumerate(STAGES)}
    spans = sorted((e.start, e.end or e.start) for e in events)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            busy += (cur_e - cur_s) if cur_e is not None else 0.0
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += (cur_e - cur_s) if cur_e is not None else 0.0
    return sorted(rows.values(), key=lambda r: order.get(r.stage, 99)), busy


@contextmanager
def run_scope() -> Iterator[str]:
    """Tag every task body started inside the block (and its threads) with one scope id."""
    scope = uuid.uuid4().hex
    token = RUN_SCOPE.set(scope)
    try:
        yield scope
    finally:
        RUN_SCOPE.reset(token)


# ----------------------------------------------------------------------------------------------------
# Input checks: cheap, before any model work (CLI calls them before Prefect even starts)
# ----------------------------------------------------------------------------------------------------


def needs_prior(cfg: MaceConfig) -> bool:
    """The general prior P is read iff CFR or closed-form fusion gives it a positive weight."""
    fusion_prior = cfg.fusion.method == "closed_form" and cfg.fusion.prior_weight > 0
    return cfg.cfr.prior_weight > 0 or fusion_prior


def needs_domain(cfg: MaceConfig) -> bool:
    """The domain prior D is built iff a retain list is given and some prior term weights it."""
    weighted = (cfg.cfr.prior_weight > 0 and cfg.cfr.domain_weight > 0) or (
        cfg.fusion.method == "closed_form" and cfg.fusion.prior_weight > 0 and cfg.fusion.domain_weight > 0)
    return bool(cfg.prior.retain) and weighted


def dominant_type(concepts: tuple[Concept, ...]) -> str:
    types = [c.type for c in concepts]
    return max(sorted(set(types)), key=types.count)


def check_inputs(cfg: MaceConfig) -> None:
    """Raise a one-line ValueError/FileNotFoundError naming the field for anything that would fail later."""
    # 1. model: a local pipeline directory (no download is ever attempted)
    model_dir(cfg.model.path)
    if cfg.model.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"model.device={cfg.model.device!r} but no CUDA device is available: use 'cpu'")
    # 2. priors: caption files exist when a prior term is weighted
    if needs_prior(cfg):
        caption_path(cfg.prior.captions)
        for x in cfg.prior.exclude:
            caption_path(x, "prior.exclude")
    # 3. prompts: the LLM backend has its URL, model and API key (environment or Secret block, never config) ...
    if cfg.prompts.backend == "llm":
        from mace_core.augment import API_KEY_ENV_VARS, settings_from_config
        from tasks.prompts import LLM_KEY_BLOCK, llm_environ

        settings_from_config(cfg.prompts)
        if not any(llm_environ().get(var, "").strip() for var in API_KEY_ENV_VARS):
            raise ValueError(
                f"prompts.backend='llm' needs an API key: set the {API_KEY_ENV_VARS[0]} environment variable "
                f"(or {' or '.join(API_KEY_ENV_VARS[1:])}; any non-empty value for a server without authentication) "
                f"or save it in the Prefect Secret block '{LLM_KEY_BLOCK}'"
            )
    else:  # ... and templates can fill prompts.num_prompts pairs for every concept
        for c in cfg.concepts:
            capacity = len(TEMPLATES[c.type]) * (1 + len(c.synonyms))
            if cfg.prompts.num_prompts > capacity:
                raise ValueError(
                    f"prompts.num_prompts={cfg.prompts.num_prompts} exceeds the {capacity} template prompts of "
                    f"concept {c.name!r}: lower it, add synonyms or use prompts.backend='llm'"
                )
    # 4. masks: a known backend; grounded_sam's checkpoints exist (paths only, nothing is loaded)
    if cfg.masks.backend not in BACKENDS:
        raise ValueError(f"masks.backend={cfg.masks.backend!r} is unknown: use one of {', '.join(BACKENDS)}")
    if cfg.masks.backend == "grounded_sam" and any(uses_masks(c, cfg.masks) for c in cfg.concepts):
        grounded_sam_paths(cfg.masks)
    # 5. the store opens (bad URL / permissions fail here, not after training)
    open_store(cfg.execution.store)


# ----------------------------------------------------------------------------------------------------
# The flow
# ----------------------------------------------------------------------------------------------------


#: Concept tags only up to this many concepts: every tag is a related resource of each Prefect event, and
#: an event with more than 100 is rejected by the server, which crashed the task runs of a 100-concept erase.
MAX_CONCEPT_TAGS = 64


def run_tags(cfg: MaceConfig) -> list[str]:
    """Tags of a run's flow run: ``mace``, ``run:<name>`` and ``concept:<name>`` for each concept (for runs
    of at most ``MAX_CONCEPT_TAGS`` concepts; task names still carry the concept beyond that)."""
    tags = ["mace", f"run:{cfg.name}"]
    if len(cfg.concepts) <= MAX_CONCEPT_TAGS:
        tags += [f"concept:{c.name}" for c in sorted(cfg.concepts, key=lambda c: c.key)]
    return tags


def tag_flow_run(tags: list[str]) -> None:
    """Add ``tags`` to the current flow run (one API call), not to each task run.

    Prefect 3.8 acquires tag concurrency slots with an API round trip for every tagged task run, on the
    critical path between a task's inputs becoming ready and its body starting: with the run's tags on its
    63 task runs a cold 5-concept erase spent 10.2 % of its wall time outside task bodies, without them
    2.3 % (benchmarks/pipeline.py). The UI filters flow runs by tag; task runs are named ``<stage>-<concept>``.
    """
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    merged = sorted(set(ctx.flow_run.tags or []) | set(tags))
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, tags=merged)


def settle(futures: list[Any]) -> None:
    """Wait for every future; re-raise the first real failure (not a downstream 'NotReady').

    A failed LoRA leaves fusion/export Pending, and their ``.result()`` would only say so; the user
    needs the original error (e.g. the ValueError naming the bad input).
    """
    wait([f for f in futures if f is not None])
    for f in futures:
        if f is not None and f.state.is_failed():
            try:
                f.result()  # raises the task's own exception
            except Exception as exc:
                new = stage_failure(exc, getattr(f, "mace_label", None))
                if new is exc:
                    raise
                raise new from exc


def stage_failure(exc: Exception, label: tuple[str, str | None] | None) -> Exception:
    """``exc`` re-made with a one-line message naming the stage and concept (same type, so callers and
    retry conditions still see a ValueError as a ValueError); ``exc`` itself when that is not possible."""
    if label is None:
        return exc
    stage, concept = label
    where = f"{stage} of concept {concept!r}" if concept else f"{stage} (concept set)"
    msg = f"stage {where} failed: {' '.join(str(exc).split()) or type(exc).__name__}"
    try:
        new = type(exc)(msg)
    except Exception:  # noqa: BLE001 - an exception type with another constructor keeps its own message
        return exc
    return new if str(new) == msg else exc


def publish_dashboards(cfg: MaceConfig, scope: str, output: str | None = None, failure: str | None = None,
                       wall_s: float | None = None) -> dict[str, dict[str, str]]:
    """This run's Prefect artifacts (tasks/dashboards.py) from its ledger; returns the per-concept status."""
    events = LEDGER.events(scope)
    status = dashboards.concept_status(events, [c.name for c in sorted(cfg.concepts, key=lambda c: c.key)])
    dashboards.publish_run(cfg.name, status, summarise(events)[0], output, failure, wall_s)
    return status


def _submit(task_fn: Any, cfg: MaceConfig, concept: str | None, *args: Any, **kwargs: Any) -> Any:
    """Submit with the run's retry policy."""
    future = with_retries(task_fn, cfg.execution.retries, cfg.execution.retry_delay_s).submit(*args, **kwargs)
    future.mace_label = (task_fn.name, concept)  # settle() names the stage and concept of a failure
    return future


@flow(name="mace-erase", flow_run_name="erase-{cfg.name}", task_runner=ThreadPoolTaskRunner(),
      persist_result=False)  # parameters validated: a deployment run passes cfg as JSON, not a MaceConfig
def erase(cfg: MaceConfig) -> RunReport:
    """Erase ``cfg.concepts`` from ``cfg.model``; record the run in the store under ``cfg.name``."""
    from flows.prior import prior as prior_flow

    log = get_run_logger()
    t0 = time.perf_counter()
    tag_flow_run(run_tags(cfg))
    with run_scope() as scope:
        # 1. validate everything cheap before any model work
        check_inputs(cfg)
        lora_fn = lora_runner()  # remote_lora_task when MACE_LORA_DEPLOYMENT names a deployment, else lora_task
        root, ex = cfg.execution.store, cfg.execution
        store = open_store(root)
        concepts = sorted(cfg.concepts, key=lambda c: c.key)  # canonical order: set stages sum in it
        # 2. base-model digests, once per run (whole model; text encoder + tokenizer for text-only stages)
        mdir = model_dir(cfg.model.path)
        model_digest = files_digest(mdir)
        text_digest = files_digest(mdir, ("text_encoder", "tokenizer"))
        log.info("erasing %d concepts from %s (%s)", len(concepts), cfg.model.path, model_digest[:12])
        m, n_models = cfg.model, ex.lora_concurrency
        # 3. per concept: prompts -> images -> masks -> stats (fan out; model work is serialised per copy)
        prompts, images, masks, stats = {}, {}, {}, {}
        for c in concepts:
            prompts[c.key] = _submit(prompts_task, cfg, c.name, c, cfg.prompts, root, cfg.seed, m)
            images[c.key] = _submit(images_task, cfg, c.name, c, cfg.seed, cfg.images, m, model_digest, root,
                                    n_models)
        for c in concepts:
            stats[c.key] = _submit(stats_task, cfg, c.name, c, prompts[c.key], m, text_digest, root, n_models)
            masks[c.key] = (_submit(masks_task, cfg, c.name, c, cfg.seed, images[c.key], cfg.masks, m,
                                    model_digest, root, n_models) if uses_masks(c, cfg.masks) else None)
        # 4. priors P (caption corpus) and D (retain list), only when weighted (subflow)
        prior_ref, domain_ref = prior_flow(cfg) if (needs_prior(cfg) or needs_domain(cfg)) else (None, None)
        # 5. CFR: the set's M, and each concept's own M_k (independent LoRA base)
        remap = _submit(cfr_task, cfg, None, stats, prior_ref, domain_ref, cfg.cfr, root)
        if cfg.lora.base == "independent":
            bases = {c.key: _submit(cfr_concept_task, cfg, c.name, c, stats[c.key], prior_ref, domain_ref,
                                    cfg.cfr, root) for c in concepts}
        else:
            bases = {c.key: remap for c in concepts}
        # 6. one LoRA per concept, at most execution.lora_concurrency at once
        loras = {c.key: _submit(lora_fn, cfg, c.name, c, cfg.seed, prompts[c.key], images[c.key],
                                masks[c.key], bases[c.key], cfg.lora, m, model_digest, root, n_models)
                 for c in concepts if cfg.lora.enabled}  # lora.enabled=false: the "CFR only" ablation
        progress = dashboards.LoraProgress(cfg.name, len(loras))
        # 7. closed-form fusion of all LoRAs -> final to_k/to_v weights
        fused = _submit(fusion_task, cfg, None, remap, bases, stats, loras, prior_ref, domain_ref, cfg.fusion,
                        m, model_digest, root, n_models)
        # 8. export a diffusers pipeline + model card
        card = {"name": cfg.name, "base": cfg.model.path, "model_digest": model_digest,
                "concepts": [{"name": c.name, "type": c.type, "mapping": c.mapping} for c in concepts],
                "lora_base": cfg.lora.base, "fusion": cfg.fusion.method}
        exported_f = _submit(export_task, cfg, None, fused, card, m, model_digest, root, n_models)
        progress.track(loras.values())  # the UI's progress bar moves as each LoRA job finishes
        try:
            settle([*prompts.values(), *images.values(), *masks.values(), *stats.values(), remap,
                    *(bases.values() if cfg.lora.base == "independent" else []), *loras.values(), fused,
                    exported_f])
        except Exception as exc:
            publish_dashboards(cfg, scope, failure=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            raise
        exported = exported_f.result()
        # 9. record the run (every ref it used, so gc keeps them) and report
        refs: dict[str, Any] = {"export": exported, "fusion": fused.result(), "cfr": remap.result()}
        for c in concepts:
            for stage, fut in (("prompts", prompts), ("images", images), ("masks", masks), ("stats", stats),
                               ("lora", loras)):
                if fut.get(c.key) is not None:
                    refs[f"{stage}/{c.key}"] = fut[c.key].result()
            if cfg.lora.base == "independent":
                refs[f"cfr_concept/{c.key}"] = bases[c.key].result()
        refs |= {k: v for k, v in (("prior", prior_ref), ("domain_prior", domain_ref)) if v is not None}
        output = str(pipeline_dir(store, exported))
        rows, busy = summarise(LEDGER.events(scope))
        wall = time.perf_counter() - t0
        store.record_run(cfg.name, list(refs.values()), {
            "config": cfg.model_dump(mode="json"), "output": output, "concepts": [c.name for c in concepts],
            "created": time.time(), "wall_s": wall,
            "stages": [vars(r) for r in rows],
        })
        log.info("run %s: %d hits, %d misses -> %s", cfg.name, sum(r.hits for r in rows),
                 sum(r.misses for r in rows), output)
        status = publish_dashboards(cfg, scope, output=output, wall_s=wall)
        return RunReport(run_id=cfg.name, concepts=[c.name for c in concepts], output=output,
                         refs={k: v.id for k, v in refs.items()}, stages=rows, wall_s=wall, busy_s=busy,
                         concept_stages=status)

