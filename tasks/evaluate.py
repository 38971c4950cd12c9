"""Stage ``evaluation`` (per model x evaluation spec): seeded images, recogniser verdicts, metrics.

Cached by (model digest, every field that changes the images or verdicts), so re-evaluating an unchanged
model is a store hit, and the base model's evaluation is shared by every erased model compared to it.
"""

from __future__ import annotations

import json
import os
import threading
from importlib import metadata
from pathlib import Path

from prefect import get_run_logger, task

from mace_core import evaluation as core_eval
from mace_core import prompt_sets, recognisers, scorers
from mace_core.concepts import Concept
from mace_core.config import EvaluationConfig
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, lease_pipeline, open_store

STAGE, VERSION = "evaluation", "1"
ROWS, METRICS = "rows.parquet", "metrics.json"


def miniworld_prompts(concept: Concept, phrase: str) -> list[str]:
    """Prompts in the miniworld's own caption grammar (the model knows no other phrasing)."""
    from miniworld import prompts as mw

    if concept.type == "identity":
        return [mw.identity_prompt(phrase)]
    if concept.type == "style":
        return [mw.style_prompt(phrase, obj) for obj in ("cat", "ship")]
    return [mw.object_prompt(phrase)]


def eval_items(cfg: EvaluationConfig) -> list[core_eval.EvalItem]:
    if cfg.prompt_file is not None:
        rows = prompt_sets.load_prompt_file(cfg.prompt_file)
        return prompt_sets.eval_items_from_rows(rows, cfg.erased, cfg.kept, cfg.seeds_per_prompt,
                                                with_synonyms=cfg.with_synonyms)
    prompts_for = miniworld_prompts if cfg.prompts == "miniworld" else core_eval.default_prompts
    return core_eval.build_eval_items(cfg.erased, cfg.kept, cfg.seeds_per_prompt, prompts_for=prompts_for,
                                      with_synonyms=cfg.with_synonyms)


def check_evaluation(cfg: EvaluationConfig) -> None:
    """Fail before any generation when a concept (of the config or the prompt file) has no recogniser label
    or the recogniser's weights are missing."""
    file_concepts = _file_concepts(cfg)
    names = [c.name for c in (*cfg.erased, *cfg.kept)] + [name for name, _ in file_concepts]
    recognisers.check_recognisable(cfg.recogniser, list(dict.fromkeys(names)),
                                   **recognisers.recogniser_options(cfg, file_concepts))


def _file_concepts(cfg: EvaluationConfig) -> list[tuple[str, str | None]]:
    """(concept, type) of the prompt file's rows (zero-shot candidates), in file order."""
    if cfg.prompt_file is None:
        return []
    seen: dict[str, str | None] = {}
    for row in prompt_sets.load_prompt_file(cfg.prompt_file):
        if row.concept:
            seen.setdefault(row.concept, row.concept_type)
    return list(seen.items())


#: Fields read only by one recogniser: left out of the cache key of the others.
_RECOGNISER_FIELDS = {"clip_zero_shot": {"clip_model", "clip_labels"}, "nudenet": {"nudenet_threshold"}}
_DIGESTS: dict[tuple, str] = {}
_DIGEST_LOCK = threading.Lock()


def _file_digest(path: str | os.PathLike) -> str:
    """Content sha256 of a file, cached per process on (path, size, mtime) (weights files are large)."""
    p = Path(path).expanduser().resolve()
    stat = p.stat()
    key = (str(p), stat.st_size, stat.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = prompt_sets.file_digest(p)
    with _DIGEST_LOCK:
        _DIGESTS[key] = digest
    return digest


def _key_config(cfg: EvaluationConfig) -> dict:
    """Everything that changes the images or verdicts; not the model path (its digest is an input) nor the store,
    nor the paths of the prompt file and scorer weights (their content digests are inputs)."""
    exclude = {"model", "store", "prompt_file", "scorer_weights"}
    for name, fields in _RECOGNISER_FIELDS.items():
        if name != cfg.recogniser:
            exclude |= fields
    return cfg.model_dump(mode="json", exclude=exclude)


def _key_inputs(cfg: EvaluationConfig, model_digest: str) -> dict[str, str]:
    """Model digest, plus the prompt file's and the recogniser weights' content digests when they are used."""
    inputs = {"model": model_digest}
    if cfg.prompt_file is not None:
        inputs["prompts"] = _file_digest(prompt_sets.resolve_prompt_file(cfg.prompt_file))
    if cfg.recogniser == "miniworld":  # a retrained classifier must not reuse old verdicts
        from miniworld.paths import CLASSIFIER_DIR

        inputs["scorer"] = _file_digest(CLASSIFIER_DIR / "model.safetensors")
    else:
        if cfg.scorer_weights:
            what = f"open_clip {cfg.clip_model}" if cfg.recogniser == "clip_zero_shot" else "NudeNet ONNX"
            scorers.require_weights(cfg.scorer_weights, what)
            inputs["scorer"] = _file_digest(cfg.scorer_weights)
        elif cfg.recogniser == "nudenet":
            try:
                inputs["scorer"] = f"nudenet=={metadata.version('nudenet')} bundled"
            except metadata.PackageNotFoundError:
                scorers.check_nudenet()
    return inputs


def _score_metrics(rows: list[dict]) -> dict:
    """Group means of the recogniser's extra scores: CLIP score and concept probability (with H_a =
    CLIP_s - CLIP_e), NudeNet box counts per class (sums, as the paper counts boxes)."""
    out: dict = {}
    groups = sorted({r["group"] for r in rows})
    for field in ("clip_score", "concept_prob"):
        if rows and field in rows[0]:
            out[field] = {g: sum(r[field] for r in rows if r["group"] == g) / sum(r["group"] == g for r in rows)
                          for g in groups}
    if "clip_score" in out and {"erased", "kept"} <= set(out["clip_score"]):
        out["h_a"] = out["clip_score"]["kept"] - out["clip_score"]["erased"]
    counts = [k for k in (rows[0] if rows else {}) if k.startswith("nudenet_")]
    if counts:
        out["nudenet"] = {g: {k.removeprefix("nudenet_"): sum(r[k] for r in rows if r["group"] == g) for k in counts}
                          for g in groups}
    return out


@task(name="evaluate", task_run_name="evaluate-{label}", **TASK_OPTIONS)
def evaluate_task(cfg: EvaluationConfig, model_path: str, model_digest: str, label: str) -> st.ArtifactRef:
    """Generate, save and score every evaluation image of ``model_path``; write rows + metrics."""
    store = open_store(cfg.store)
    config, inputs = _key_config(cfg), _key_inputs(cfg, model_digest)
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, label) as rec:
        if rec.ref is not None:
            return rec.ref
        items = eval_items(cfg)
        # every check and weights load happens here, before any image is generated
        options = recognisers.recogniser_options(cfg, _file_concepts(cfg))
        if options:
            recognisers.check_recognisable(cfg.recogniser, sorted({it.concept for it in items}), **options)
        recognise = recognisers.load_recogniser(cfg.recogniser, **options)
        extras: dict[int, dict] = {}
        with lease_pipeline(model_path, "float32", "cpu") as pipe, \
                store.writer(STAGE, key, config=config, inputs=inputs) as out:
            index = {id(it): i for i, it in enumerate(items)}

            def save(chunk, images):
                for it, img in zip(chunk, images, strict=True):
                    formats.save_png(out / f"{index[id(it)]:05d}.png", img)

            def judge(images, chunk):
                if not hasattr(recognise, "score"):
                    return recognise(images, chunk)
                scored = recognise.score(images, chunk)  # verdicts plus per-image scores (CLIP, NudeNet)
                for it, s in zip(chunk, scored, strict=True):
                    extras[index[id(it)]] = {k: v for k, v in s.items() if k != "correct"}
                return [s["correct"] for s in scored]

            result = core_eval.evaluate(pipe, items, judge, cfg.steps, cfg.guidance_scale, cfg.batch_size,
                                        progress=rec.progress, on_images=save)
            rows = [dict(r, **extras.get(i, {}), file=f"{i:05d}.png") for i, r in enumerate(result.rows)]
            formats.save_table(out / ROWS, rows)
            (out / METRICS).write_text(json.dumps(
                {"accuracy": result.accuracy, "per_concept": result.per_concept, "h_o": result.h_o,
                 "h_c": result.h_c, "n_images": len(rows), **_score_metrics(rows)}, indent=1, sort_keys=True))
        get_run_logger().info("evaluate %s: %s", label, result.accuracy)
        return finish(store, STAGE, key)


def load_metrics(store: st.ArtifactStore, ref: st.ArtifactRef) -> dict:
    return json.loads((store.path(ref) / METRICS).read_text())


def load_rows(store: st.ArtifactStore, ref: st.ArtifactRef) -> list[dict]:
    return formats.load_table(store.path(ref) / ROWS)
