"""``mace``: erase concepts from a diffusers model, grow a finished run, inspect the artifact store.

Every command validates its input before any model work or Prefect start-up; errors are printed as one
line (``error: ...``) with exit code 1 (2 for usage errors), never as a traceback (set ``MACE_DEBUG=1`` to
see one). Prefect's console log is muted unless ``--verbose``: progress bars and a summary table replace it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mace_cli.config_io import ConfigError, load_config, parse_concept
from mace_cli.ops import deploy as ops_deploy
from mace_cli.ops import ops_app

app = typer.Typer(
    name="mace", help="MACE mass concept erasure as an incremental Prefect pipeline.", no_args_is_help=True,
    add_completion=False, pretty_exceptions_enable=False,
)
artifacts_app = typer.Typer(help="Inspect and maintain the artifact store.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(ops_app, name="ops")
app.command("deploy")(ops_deploy)

console = Console()
err_console = Console(stderr=True)

DEFAULT_STORE = os.environ.get("MACE_STORE", "artifacts")
StoreOpt = Annotated[str,
                     typer.Option("--store", "-s", help="Artifact store root (dir or fsspec URL); env MACE_STORE.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's own log on the console.")]


# ----------------------------------------------------------------------------------------------------
# Errors and environment
# ----------------------------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, ConfigError)) else f"{type(exc).__name__}: {text}"


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any exception into ``error: <one line>`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the CLI's contract: one line, no traceback
            if os.environ.get("MACE_DEBUG"):
                raise
            if isinstance(exc, KeyboardInterrupt):
                err_console.print("error: interrupted (finished artifacts are kept; rerun to resume)",
                                  highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
            err_console.print(f"error: {one_line(exc)}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _prefect_env() -> None:
    """Defaults for a local run: patient ephemeral server, no telemetry (the user's settings win)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@contextlib.contextmanager
def quiet_prefect(verbose: bool) -> Iterator[None]:
    """Mute Prefect's console handlers (its flow/task logs and failure tracebacks) for the block."""
    if verbose:
        yield
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    import prefect  # noqa: F401 - configures logging

    changed: list[tuple[logging.Handler, int]] = []
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            if type(h).__name__ == "PrefectConsoleHandler":
                changed.append((h, h.level))
                h.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for h, level in changed:
            h.setLevel(level)


@contextlib.contextmanager
def quiet_loading(verbose: bool) -> Iterator[None]:
    """Switch off diffusers' and transformers' model-loading bars for the block: under the stage bars they
    printed two stray bars per pipeline load."""
    if verbose:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


class StageBars:
    """Ledger listener drawing one bar per stage (task bodies done / started) and one per running body.

    Task bodies of one stage start in parallel threads, so every update holds one lock: the first two events of a
    stage must not each create its bar (the second would drop the first's count)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[str, Any] = {}
        self.totals: dict[str, int] = {}
        self.inner: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, event: Any, info: Any) -> None:
        with self._lock:
            self._update(kind, event, info)

    def _update(self, kind: str, event: Any, info: Any) -> None:
        progress = self.progress
        if event.stage not in self.bars:
            self.bars[event.stage] = progress.add_task(event.stage, total=0, note="")
            self.totals[event.stage] = 0
        bar = self.bars[event.stage]
        if kind == "start":
            self.totals[event.stage] += 1
            progress.update(bar, total=self.totals[event.stage])
        elif kind == "end":
            status = "hit" if event.hit else ("failed" if event.hit is None else "done")
            progress.update(bar, advance=1, note=f"{event.concept or ''} {status}".strip())
            if id(event) in self.inner:
                progress.remove_task(self.inner.pop(id(event)))
        elif kind == "progress":
            if id(event) not in self.inner:
                self.inner[id(event)] = progress.add_task(f"  {event.stage}:{event.concept or ''}"[:14],
                                                          total=info["total"], note="")
            progress.update(self.inner[id(event)], completed=info["done"], total=info["total"])


@contextlib.contextmanager
def stage_progress(enabled: bool = True) -> Iterator[None]:
    """Rich progress: one bar per stage (task bodies done / started), fed by the task ledger."""
    from tasks._cache import LEDGER

    if not enabled:
        yield
        return
    progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console, transient=False)
    on_event = StageBars(progress)
    with progress, LEDGER.listening(on_event):
        yield


def summary_table(report: Any, wall_s: float) -> Table:
    """Concepts, cache hits/misses and time per stage, output path.

    A stage's time sums its tasks' bodies, which may run concurrently (one per concept), so stages can add up to
    more than the run's wall time, shown on the total row."""
    table = Table(title=f"run {report.run_id}: {len(report.concepts)} concepts", title_justify="left")
    for col, just in (("stage", "left"), ("hits", "right"), ("misses", "right"), ("task time (s)", "right")):
        table.add_column(col, justify=just)
    for r in report.stages:
        table.add_row(r.stage, str(r.hits), str(r.misses), f"{r.seconds:.1f}")
    table.add_row("total (wall time)", str(report.hits), str(report.misses), f"{wall_s:.1f}", style="bold")
    table.caption = f"concepts: {', '.join(report.concepts)}\noutput: {report.output}"
    table.caption_justify = "left"
    return table


@contextlib.contextmanager
def running_flow(verbose: bool, progress: bool = True) -> Iterator[None]:
    """How every command runs a flow: Prefect's console and model-loading bars muted, stage bars drawn,
    local-run settings."""
    from flows.local import local_run_settings

    with quiet_prefect(verbose), quiet_loading(verbose), stage_progress(progress), local_run_settings():
        yield


def _run_flow(fn: Callable[[], Any], verbose: bool, progress: bool = True) -> Any:
    t0 = time.perf_counter()
    with running_flow(verbose, progress):
        report = fn()
    console.print(summary_table(report, time.perf_counter() - t0))
    return report


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------


@app.command()
@cli_errors
def erase(
    config: Annotated[Path, typer.Argument(help="Config file (.yaml/.toml); see docs/CONFIG.md and configs/.")],
    store: Annotated[str | None, typer.Option("--store", "-s", help="Override execution.store.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Record the run under this name.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", "-e", help="Then score erased vs kept concepts, before "
                                           "(base model) and after (see the config's evaluation section).")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Erase the config's concepts; the model lands in the store (path printed at the end)."""
    cfg = load_config(config, store=store, name=name)
    _prefect_env()
    from flows.erase import check_inputs

    check_inputs(cfg)  # one-line errors before Prefect starts
    if evaluate:
        _check_evaluation(cfg)
    from flows.erase import erase as erase_flow

    report = _run_flow(lambda: erase_flow(cfg), verbose)
    if evaluate:
        from flows.evaluate import plan_for_run

        ecfg, reference = plan_for_run(cfg, report.output)
        _run_evaluation(ecfg, reference, verbose)


def _check_evaluation(cfg: Any) -> None:
    """Fail before erasing when the evaluation could not run (e.g. a concept the recogniser cannot judge)."""
    from flows.evaluate import plan_for_run
    from tasks.evaluate import check_evaluation

    ecfg, _ = plan_for_run(cfg, cfg.model.path)
    check_evaluation(ecfg)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def evaluation_tables(report: Any, reference: str | None, model: str) -> list[Table]:
    """Before/after accuracy per group (and H_o/H_c), then per concept."""
    groups = (("erased", "erased concepts (lower is better)"), ("synonym", "their synonyms (lower is better)"),
              ("kept", "kept concepts (higher is better)"))
    summary = Table(title="classifier accuracy, %")
    summary.add_column("model")
    for _, title in groups:
        summary.add_column(title, justify="right")
    summary.add_column("H_o", justify="right")
    summary.add_column("H_c", justify="right")
    rows = [("before", report.reference_metrics)] if report.reference_metrics else []
    rows.append(("after", report.metrics))
    summary.caption = (f"before = {reference}\n" if report.reference_metrics else "") + f"after = {model}"
    summary.caption_justify = "left"
    for label, m in rows:
        summary.add_row(label, *(_pct(m["accuracy"].get(g)) for g, _ in groups), _pct(m.get("h_o")), _pct(m.get("h_c")))
    per = Table(title="per concept, % recognised")
    for col in ("group", "concept", "before", "after"):
        per.add_column(col, justify="right" if col in ("before", "after") else "left")
    before = (report.reference_metrics or {}).get("per_concept", {})
    for g, _ in groups:
        for concept, acc in sorted(report.metrics.get("per_concept", {}).get(g, {}).items()):
            per.add_row(g, concept, _pct(before.get(g, {}).get(concept)), _pct(acc))
    return [summary, per]


def _run_evaluation(ecfg: Any, reference: str | None, verbose: bool) -> Any:
    from flows.evaluate import evaluate as evaluate_flow

    with running_flow(verbose):
        report = evaluate_flow(ecfg, reference_model=reference)
    for table in evaluation_tables(report, reference, ecfg.model):
        console.print(table)
    console.print(f"report (metrics + before/after grid): {report.report_dir}")
    return report


@app.command("eval")
@cli_errors
def eval_cmd(
    model: Annotated[str, typer.Argument(help="A recorded run, a diffusers pipeline directory, or 'miniworld'.")],
    erased: Annotated[list[str] | None, typer.Option("--erased", help="Concept expected gone, name[:type] "
                                                    "(default for a run: the run's concepts).")] = None,
    kept: Annotated[list[str] | None, typer.Option("--kept", "-k", help="Concept expected kept, name[:type] "
                                                  "(default on the miniworld: 5 others of each erased type).")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="Model to compare with (default for a run: "
                                                  "its base model).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=1000, help="Images per prompt.")] = 8,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000)] = 20,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, max=50.0)] = 7.5,
    prompts: Annotated[str, typer.Option("--prompts", help="miniworld (the world's grammar) or paper "
                                         "(the paper's templates).")] = "miniworld",
    prompt_file: Annotated[Path | None, typer.Option("--prompt-file", help="A prompt set (CSV/parquet/JSON, "
                                                     "e.g. data/prompts/celebrity_10_concepts.csv).")] = None,
    recogniser: Annotated[str,
                          typer.Option("--recogniser", help="miniworld, clip_zero_shot or nudenet.")] = "miniworld",
    scorer_weights: Annotated[Path | None, typer.Option("--scorer-weights", help="Weights of the recogniser "
                                                        "(open_clip checkpoint for clip_zero_shot).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    verbose: VerboseOpt = False,
) -> None:
    """Score a model on the paper's protocol (Acc_e, Acc_s, Acc_g, H_o, H_c), before vs after."""
    from tasks.evaluate import check_evaluation
    from mace_core.concepts import Concept
    from mace_core.config import EvaluationConfig

    def parse(spec: str) -> Concept:
        name, _, ctype = spec.partition(":")
        return parse_concept(f"{name}:{ctype or 'object'}:not {name}")

    path, base, run_concepts = _resolve_model(model, store)
    erased_c = tuple(parse(e) for e in erased) if erased else run_concepts
    kept_c = tuple(parse(k) for k in kept) if kept else ()
    if not kept_c and "miniworld" in (base, model):
        from flows.evaluate import miniworld_kept

        kept_c = miniworld_kept(erased_c)
    ecfg = EvaluationConfig(model=path, erased=erased_c, kept=kept_c, seeds_per_prompt=seeds, steps=steps,
                            guidance_scale=guidance, prompts=prompts, store=store, recogniser=recogniser,
                            prompt_file=str(prompt_file) if prompt_file else None,
                            scorer_weights=str(scorer_weights) if scorer_weights else None)
    check_evaluation(ecfg)
    _prefect_env()
    _run_evaluation(ecfg, reference or base, verbose)


def _resolve_model(model: str, store: str) -> tuple[str, str | None, tuple[Any, ...]]:
    """(pipeline path, base model, erased concepts) of a run name; (model, None, ()) for a model path."""
    if Path(model).exists() or model == "miniworld":
        return model, None, ()
    from flows.add import load_run_config
    from tasks._cache import open_store

    cfg = load_run_config(store, model)
    return open_store(store).read_run(model)["meta"]["output"], cfg.model.path, cfg.concepts


@app.command()
@cli_errors
def add(
    run: Annotated[str, typer.Argument(help="A recorded run (see `mace status`).")],
    concepts: Annotated[list[str] | None, typer.Argument(help="Concepts as name[:type[:mapping]].")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", "-r", help="Concept name to remove.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Record the result under a new run name.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    verbose: VerboseOpt = False,
) -> None:
    """Add (or --remove) concepts to a finished run; only what the change touches is recomputed."""
    from flows.add import AddRequest, changed_config, load_run_config

    base = load_run_config(store, run)
    req = AddRequest(run=run, add=tuple(parse_concept(c, base.concepts) for c in (concepts or [])),
                     remove=tuple(remove or ()), store=store, name=name)
    _prefect_env()
    from flows.erase import check_inputs

    check_inputs(changed_config(base, req))
    from flows.add import add as add_flow

    _run_flow(lambda: add_flow(req), verbose)


@app.command()
@cli_errors
def prior(
    config: Annotated[Path, typer.Argument(help="Config file; reads model, prior and execution.")],
    store: Annotated[str | None, typer.Option("--store", "-s", help="Override execution.store.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Precompute the general prior P (and domain prior D) for the config's model and captions."""
    cfg = load_config(config, store=store)
    _prefect_env()
    from flows.prior import prior as prior_flow
    from tasks._cache import model_dir
    from tasks.prior import caption_path

    model_dir(cfg.model.path)
    caption_path(cfg.prior.captions)
    with running_flow(verbose):
        P, D = prior_flow(cfg)
    console.print(f"prior: {P.id}" + (f"\ndomain prior: {D.id}" if D is not None else ""))


@app.command()
@cli_errors
def status(run: Annotated[str, typer.Argument(help="Run name.")], store: StoreOpt = DEFAULT_STORE) -> None:
    """Show a recorded run: concepts, output, per-stage cache record, and whether its artifacts are present."""
    from flows.add import load_run_config
    from tasks._cache import open_store

    cfg = load_run_config(store, run)
    record = open_store(store).read_run(run)
    meta = record["meta"]
    table = Table(title=f"run {run}", title_justify="left")
    for col in ("concept", "type", "mapping"):
        table.add_column(col)
    for c in cfg.concepts:
        table.add_row(c.name, c.type, c.mapping)
    console.print(table)
    out = meta.get("output", "?")
    console.print(f"model: {cfg.model.path}   lora base: {cfg.lora.base}   fusion: {cfg.fusion.method}")
    console.print(f"output: {out} ({'present' if Path(str(out)).exists() else 'missing'})")
    if meta.get("stages"):
        st_table = Table(title="last run", title_justify="left")
        for col in ("stage", "hits", "misses", "task time (s)"):
            st_table.add_column(col)
        for r in meta["stages"]:
            st_table.add_row(r["stage"], str(r["hits"]), str(r["misses"]), f"{r['seconds']:.1f}")
        console.print(st_table)


@artifacts_app.command("ls")
@cli_errors
def artifacts_ls(
    store: StoreOpt = DEFAULT_STORE,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage.")] = None,
) -> None:
    """List stored artifacts (stage, key, digest) and recorded runs."""
    from tasks._cache import open_store

    st = open_store(store)
    table = Table(title=f"artifacts in {store}", title_justify="left")
    for col in ("stage", "key", "digest"):
        table.add_column(col)
    n = 0
    table.add_column("size", justify="right")
    for a in st.ls(stage):
        table.add_row(a["stage"], a["key"][:16], a["digest"][:16], f"{a['size'] / 1e6:.2f} MB")
        n += 1
    console.print(table)
    console.print(f"{n} artifacts; runs: {', '.join(r['run_id'] for r in st.list_runs()) or 'none'}")


@artifacts_app.command("verify")
@cli_errors
def artifacts_verify(
    store: StoreOpt = DEFAULT_STORE,
    repair: Annotated[bool,
                      typer.Option("--repair", help="Delete corrupt artifacts (the next run rebuilds them).")] = False,
) -> None:
    """Re-hash every artifact; exit 1 and list the corrupt ones if any (or delete them with --repair)."""
    from tasks._cache import open_store

    st = open_store(store)
    problems = st.verify()
    if problems and repair:
        ids = sorted({_artifact_of(st, p.path) for p in problems} - {(None, None)})
        for s, k in ids:
            st.delete(s, k)
            console.print(f"deleted {s}/{k}", highlight=False)
        problems = st.verify()
    if problems:
        for p in problems:
            err_console.print(f"corrupt: {p}", highlight=False, markup=False, soft_wrap=True)
        err_console.print(f"error: {len(problems)} corrupt artifact(s) in {store}", highlight=False)
        raise typer.Exit(1)
    console.print(f"ok: every artifact in {store} matches its manifest")


def _artifact_of(st: Any, path: str) -> tuple[str | None, str | None]:
    """(stage, key) of the artifact a problem path lies in, if any."""
    import re

    root = str(st.root_url).removeprefix("file://")
    m = re.search(r"([a-z][a-z0-9_]{0,31})/([0-9a-f]{64})(/|$)", path.removeprefix(root))
    return (m.group(1), m.group(2)) if m else (None, None)


@artifacts_app.command("gc")
@cli_errors
def artifacts_gc(
    store: StoreOpt = DEFAULT_STORE,
    keep: Annotated[list[str] | None,
                    typer.Option("--keep", "-k", help="Runs to keep (default: all recorded).")] = None,
) -> None:
    """Delete artifacts that no kept run reaches."""
    from tasks._cache import open_store

    st = open_store(store)
    # no --keep: keep every recorded run (the store refuses when none is recorded: that would delete all)
    removed = st.gc(list(keep) if keep else None)
    runs = list(keep) if keep else [r["run_id"] for r in st.list_runs()]
    console.print(f"gc: kept runs {', '.join(runs) or 'none'}; removed {len(removed)} entr(y/ies)")


@app.command()
@cli_errors
def generate(
    model: Annotated[str, typer.Argument(help="A run name, a diffusers pipeline directory, or 'miniworld'.")],
    prompt: Annotated[str, typer.Argument(help="Text prompt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for PNGs.")] = Path("generated"),
    n: Annotated[int, typer.Option("--n", min=1, max=64, help="Number of images.")] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of image 0 (image i uses seed + i).")] = 0,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000)] = 30,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, max=50.0)] = 7.5,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Generate images from an erased (or any) model."""
    path, _, _ = _resolve_model(model, store)
    from mace_core import generate as core_generate
    from mace_core import models

    with console.status(f"loading {path}"):
        pipe = models.load_pipeline(path)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
        bar = progress.add_task("gen", total=n)
        images = core_generate.generate_images(
            pipe, [prompt] * n, [seed + i for i in range(n)], steps, guidance, batch_size=min(n, 8),
            progress=lambda done, total: progress.update(bar, completed=done))
    for i, img in enumerate(images):
        img.save(out / f"{seed + i:06d}.png")
    console.print(f"{n} image(s) in {out}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
