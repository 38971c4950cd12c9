"""Pipeline benchmark: wall time of erase runs (1, 5, 10 concepts cold), an all-hits rerun, and add-one to 10
versus from-scratch 11, with Prefect overhead (flow wall time outside every task body) as a share.

    python -m benchmarks.pipeline                 # miniworld if its weights are present, else a tiny pipeline
    python -m benchmarks.pipeline --model tiny    # force the tiny random SD1-shaped pipeline

Writes benchmarks/results/pipeline.json and pipeline.md. Each cold run uses a fresh store; the Prefect
ephemeral server is started once beforehand (its start-up is reported separately, not in any run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path(__file__).resolve().parent / "results"
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "flower")


def _model(kind: str) -> tuple[str, str]:
    """(model path, description)."""
    if kind in ("auto", "miniworld"):
        from miniworld.paths import PIPELINE_DIR

        if (Path(PIPELINE_DIR) / "model_index.json").is_file():
            return "miniworld", "miniworld (shipped model)"
        if kind == "miniworld":
            raise SystemExit("miniworld weights are not present: run with --model tiny")
    from tests.tiny_sd.conftest import build_tiny_pipeline

    path = Path(tempfile.mkdtemp(prefix="bench-model-")) / "sd1"
    build_tiny_pipeline("sd1", seed=0).save_pretrained(path, safe_serialization=True)
    return str(path), "tiny random SD1-shaped pipeline (tests/tiny_sd; miniworld weights absent)"


def _config(model: str, store: str, n: int, name: str = "bench"):
    from mace_core.config import MaceConfig

    return MaceConfig.model_validate({
        "name": name, "seed": 2024,
        "concepts": [{"name": c, "type": "object", "mapping": "forest"} for c in NAMES[:n]],
        "model": {"path": model},
        "prompts": {"num_prompts": 30},
        "images": {"num_images": 4, "steps": 10, "batch_size": 4},
        "masks": {"backend": "attention"},
        "cfr": {"lam": 100.0},
        "lora": {"steps": 50, "learning_rate": 1e-4},
        "fusion": {"lam": 100.0},
        "execution": {"store": store, "retries": 0},
    })


def _measure(label: str, fn) -> dict:
    """Run ``fn`` as the CLI runs a flow (``flows.local.local_run_settings``) and time it."""
    from flows.local import local_run_settings

    t0 = time.perf_counter()
    with local_run_settings():
        report = fn()
    wall = time.perf_counter() - t0
    row = {
        "run": label, "concepts": len(report.concepts), "wall_s": round(wall, 2),
        "task_body_s": round(report.busy_s, 2),
        "prefect_overhead_s": round(wall - report.busy_s, 2),
        "prefect_overhead_share": round((wall - report.busy_s) / wall, 3),
        "hits": report.hits, "misses": report.misses,
        "stages": {r.stage: {"hits": r.hits, "misses": r.misses, "s": round(r.seconds, 2)} for r in report.stages},
    }
    print(f"{label:<28} {wall:8.1f} s  body {report.busy_s:7.1f} s  overhead {row['prefect_overhead_share']:.1%}"
          f"  hits {report.hits} misses {report.misses}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="auto", choices=("auto", "miniworld", "tiny"))
    ap.add_argument("--sizes", default="1,5,10")
    args = ap.parse_args()

    from prefect import flow

    from flows.add import AddRequest, add
    from flows.erase import erase
    from mace_core.concepts import Concept
    from tasks._cache import clear_pipelines

    model, model_desc = _model(args.model)

    @flow(persist_result=False)
    def warm_up() -> None:
        return None

    t0 = time.perf_counter()
    warm_up()
    server_s = time.perf_counter() - t0
    root = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        clear_pipelines()  # each cold run loads the model like a fresh process would
        rows.append(_measure(f"cold {n}",
                             lambda: erase(_config(model, str(root / f"s{n}"), n))))  # noqa: B023 - called at once
    n = sizes[-1]
    rows.append(_measure(f"rerun {n} (all hits)", lambda: erase(_config(model, str(root / f"s{n}"), n))))
    extra = Concept(name=NAMES[n], type="object", mapping="forest")
    rows.append(_measure(f"add one to {n}", lambda: add(AddRequest(run="bench", add=(extra,),
                                                                    store=str(root / f"s{n}")))))
    clear_pipelines()
    rows.append(_measure(f"from scratch {n + 1}", lambda: erase(_config(model, str(root / "scratch"), n + 1))))
    shutil.rmtree(root, ignore_errors=True)
    if model != "miniworld":  # the tiny model _model built in its own temporary directory
        shutil.rmtree(Path(model).parent, ignore_errors=True)

    add_row, scratch_row = rows[-2], rows[-1]
    result = {
        "model": model_desc, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, CPU only",
        "settings": "30 prompts, 4 images x 10 steps, attention masks, LoRA rank 1 x 50 steps, lam=100",
        "prefect_server_start_s": round(server_s, 1), "runs": rows,
        "add_one_over_scratch": round(add_row["wall_s"] / scratch_row["wall_s"], 3),
        "command": "python -m benchmarks.pipeline" + (f" --model {args.model}" if args.model != "auto" else ""),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    md = [f"# Pipeline benchmark ({model_desc})", "",
          f"{result['machine']}; {result['settings']}. Prefect ephemeral server start "
          f"{server_s:.1f} s (once, not in any row). Command: `{result['command']}`.", "",
          "| run | concepts | wall (s) | in task bodies (s) | Prefect overhead | hits | misses |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['run']} | {r['concepts']} | {r['wall_s']} | {r['task_body_s']} | {r['prefect_overhead_share']:.1%} "
           f"| {r['hits']} | {r['misses']} |" for r in rows]
    md += ["", f"Add one concept to {n}: {add_row['wall_s']} s vs from scratch {n + 1}: {scratch_row['wall_s']} s "
           f"(ratio {result['add_one_over_scratch']:.2f}; target <= 0.2).",
           "Prefect overhead = wall time of the flow call minus the union of task-body intervals (orchestration, "
           "state round-trips to the API, waiting between dependent tasks).", ""]
    (OUT / "pipeline.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
