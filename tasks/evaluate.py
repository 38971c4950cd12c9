"""Stage ``evaluation`` (per model x evaluation spec): seeded images, recogniser verdicts, metrics.

Cached by (model digest, every field that changes the images or verdicts), so re-evaluating an unchanged
model is a store hit, and the base model's evaluation is shared by every erased model compared to it.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task

from mace_core import evaluation as core_eval
from mace_core import recognisers
from mace_core.concepts import Concept
from mace_core.config import EvaluationConfig
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
    prompts_for = miniworld_prompts if cfg.prompts == "miniworld" else core_eval.default_prompts
    return core_eval.build_eval_items(cfg.erased, cfg.kept, cfg.seeds_per_prompt, prompts_for=prompts_for,
                                      with_synonyms=cfg.with_synonyms)


def _key_config(cfg: EvaluationConfig) -> dict:
    """Everything that changes the images or verdicts; not the model path (its digest is an input) nor the store."""
    return cfg.model_dump(mode="json", exclude={"model", "store"})


@task(name="evaluate", task_run_name="evaluate-{label}", **TASK_OPTIONS)
def evaluate_task(cfg: EvaluationConfig, model_path: str, model_digest: str, label: str) -> st.ArtifactRef:
    """Generate, save and score every evaluation image of ``model_path``; write rows + metrics."""
    store = open_store(cfg.store)
    config, inputs = _key_config(cfg), {"model": model_digest}
    key = key_for(STAGE, VERSION, config, inputs)
    with cached_stage(store, STAGE, key, label) as rec:
        if rec.ref is not None:
            return rec.ref
        items = eval_items(cfg)
        recognise = recognisers.load_recogniser(cfg.recogniser)
        with lease_pipeline(model_path, "float32", "cpu") as pipe, \
                store.writer(STAGE, key, config=config, inputs=inputs) as out:
            index = {id(it): i for i, it in enumerate(items)}

            def save(chunk, images):
                for it, img in zip(chunk, images, strict=True):
                    st.save_png(out / f"{index[id(it)]:05d}.png", img)

            result = core_eval.evaluate(pipe, items, recognise, cfg.steps, cfg.guidance_scale, cfg.batch_size,
                                        progress=rec.progress, on_images=save)
            rows = [dict(r, file=f"{i:05d}.png") for i, r in enumerate(result.rows)]
            st.save_table(out / ROWS, rows)
            (out / METRICS).write_text(json.dumps(
                {"accuracy": result.accuracy, "per_concept": result.per_concept, "h_o": result.h_o,
                 "h_c": result.h_c, "n_images": len(rows)}, indent=1, sort_keys=True))
        get_run_logger().info("evaluate %s: %s", label, result.accuracy)
        return finish(store, STAGE, key)


def load_metrics(store: st.ArtifactStore, ref: st.ArtifactRef) -> dict:
    return json.loads((store.path(ref) / METRICS).read_text())


def load_rows(store: st.ArtifactStore, ref: st.ArtifactRef) -> list[dict]:
    return st.load_table(store.path(ref) / ROWS)
