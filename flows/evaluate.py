"""Flow ``mace-evaluate``: the paper's erasure protocol on a model, optionally against a reference model.

Wiring only: each model's evaluation is one cached task (``tasks.evaluate``); the comparison (metrics table,
before/after image grid) is written to the store as a ``report`` artifact and published to the Prefect UI.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mace_core.concepts import Concept
from mace_core.config import EvaluationConfig, MaceConfig
from tasks import formats
from tasks._cache import files_digest, key_for, model_dir, open_store
from tasks.evaluate import check_evaluation, evaluate_task, load_metrics, load_rows

REPORT_STAGE, REPORT_VERSION = "report", "1"


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of the evaluated model (and the reference), and the report artifact's location."""

    metrics: dict
    reference_metrics: dict | None
    report_dir: str
    model_ref: str = ""  # "evaluation/<key>": images, per-image rows and metrics of the model
    reference_ref: str = ""  # the same for the reference model ("" without one)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def metrics_markdown(metrics: dict, reference: dict | None, model: str, ref_name: str | None) -> str:
    """Markdown table: Acc_e / Acc_s / Acc_g / H_o / H_c (percent) for reference and model."""
    lines = ["| model | Acc_e (erased, lower=better) | Acc_s (kept) | Acc_g (synonyms, lower=better) | H_o | H_c |",
             "|---|---|---|---|---|---|"]
    for name, m in ((ref_name, reference), (model, metrics)):
        if m is None:
            continue
        a = m["accuracy"]
        lines.append(f"| {name} | {_fmt(a.get('erased'))} | {_fmt(a.get('kept'))} | {_fmt(a.get('synonym'))} "
                     f"| {_fmt(m.get('h_o'))} | {_fmt(m.get('h_c'))} |")
    return "\n".join(lines)


def image_grid(rows_a: list[dict], dir_a, rows_b: list[dict] | None, dir_b, per_group: int = 8) -> Image.Image:
    """Before/after grid: one column per (group, prompt) first seed; top row reference, bottom row model."""
    picked: list[int] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rows_a):
        key = f"{r['group']}|{r['prompt']}"
        if key not in seen and sum(1 for k in seen if k.startswith(r["group"])) < per_group:
            seen[key] = i
            picked.append(i)
    sources = [(rows_b, dir_b)] if rows_b is not None else []
    sources.append((rows_a, dir_a))
    tile = Image.open(dir_a / rows_a[picked[0]]["file"]).size[0] if picked else 32
    grid = Image.new("RGB", (tile * max(len(picked), 1), tile * len(sources)), "white")
    for r, (rows, d) in enumerate(sources):
        for c, i in enumerate(picked):
            grid.paste(Image.open(d / rows[i]["file"]).convert("RGB").resize((tile, tile)), (c * tile, r * tile))
    return grid


# validated: deployments pass JSON
@flow(name="mace-evaluate", flow_run_name="evaluate-{cfg.model}", persist_result=False)
def evaluate(cfg: EvaluationConfig, reference_model: str | None = None) -> EvaluationReport:
    """Score ``cfg.model`` (and ``reference_model``, e.g. the base model) on the same seeded prompts."""
    log = get_run_logger()
    store = open_store(cfg.store)
    # 1. validate before generating anything: models exist, every concept has a recogniser label
    check_evaluation(cfg)
    digest = files_digest(model_dir(cfg.model))
    ref_digest = files_digest(model_dir(reference_model)) if reference_model else None
    # 2. one cached evaluation per model (same items and seeds: paired before/after)
    ref_ref = evaluate_task(cfg, reference_model, ref_digest, "reference") if reference_model else None
    ref = evaluate_task(cfg, cfg.model, digest, "model")
    metrics = load_metrics(store, ref)
    ref_metrics = load_metrics(store, ref_ref) if ref_ref else None
    # 3. report artifact: metrics table + before/after grid
    inputs = {"model": ref.digest, "reference": ref_ref.digest if ref_ref else ""}
    key = key_for(REPORT_STAGE, REPORT_VERSION, {}, inputs)
    table = metrics_markdown(metrics, ref_metrics, cfg.model, reference_model)
    if store.get(REPORT_STAGE, key) is None:
        with store.writer(REPORT_STAGE, key, config={}, inputs=inputs) as out:
            grid = image_grid(load_rows(store, ref), store.path(ref),
                              load_rows(store, ref_ref) if ref_ref else None,
                              store.path(ref_ref) if ref_ref else None)
            formats.save_png(out / "grid.png", grid)
            (out / "report.md").write_text(
                f"# Erasure evaluation\n\n{table}\n\n![before (top) / after (bottom)](grid.png)\n")
    report_dir = store.path(store.get(REPORT_STAGE, key))
    create_markdown_artifact(
        key="mace-evaluation", description=f"Erasure metrics for {cfg.model}",
        markdown=f"{table}\n\nGrid (reference top, model bottom): `{report_dir / 'grid.png'}`")
    log.info("evaluation: %s", metrics["accuracy"])
    return EvaluationReport(metrics=metrics, reference_metrics=ref_metrics, report_dir=str(report_dir),
                            model_ref=ref.id, reference_ref=ref_ref.id if ref_ref else "")


def miniworld_kept(erased: tuple[Concept, ...], per_type: int = 5) -> tuple[Concept, ...]:
    """Default kept set on the miniworld: up to ``per_type`` world labels of each erased type, not erased."""
    from miniworld.world import IDENTITIES, OBJECT_CLASSES, STYLES

    names = {"object": OBJECT_CLASSES, "identity": IDENTITIES, "style": STYLES}
    gone = {c.key for c in erased}
    kept: list[Concept] = []
    for ctype in sorted({c.type for c in erased} & set(names)):
        free = [n for n in names[ctype] if n.casefold() not in gone][:per_type]
        kept += [Concept(name=n, type=ctype, mapping=f"not {n}") for n in free]
    return tuple(kept)


def plan_for_run(cfg: MaceConfig, output: str) -> tuple[EvaluationConfig, str]:
    """The evaluation of an erase run: its output vs its base model, on ``cfg.evaluation``'s plan."""
    plan = cfg.evaluation
    kept = plan.kept
    if not kept and cfg.model.path == "miniworld":
        kept = miniworld_kept(cfg.concepts)
    ecfg = EvaluationConfig(model=output, erased=cfg.concepts, kept=kept, seeds_per_prompt=plan.seeds_per_prompt,
                            steps=plan.steps, guidance_scale=plan.guidance_scale, batch_size=plan.batch_size,
                            prompts=plan.prompts, with_synonyms=plan.with_synonyms, store=cfg.execution.store)
    return ecfg, cfg.model.path
