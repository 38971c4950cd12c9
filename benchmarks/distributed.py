"""Distributed-path overhead: seconds per LoRA job spent outside training, remote (gpu pool) vs in-process.

    PYTHONPATH=. python -m benchmarks.distributed --concepts 3 10

For each N: one authenticated Prefect server on 127.0.0.1 (mace_cli.ops.LocalServer), the cpu/gpu pools, the
``mace-train-lora/gpu`` deployment and two process workers (``PREFECT_WORKER_QUERY_SECONDS=1``); an erase of
N concepts from a tiny random SD1 pipeline in-process, then the same erase (fresh store) with
``MACE_LORA_DEPLOYMENT=mace-train-lora/gpu``. Per remote LoRA job, from the API's own timestamps:

- ``wait``: the parent's ``lora-<c>`` task run (start to end): what the erase waited for that job;
- ``train``: the child's ``lora-<c>`` task run (the same lora_task as in-process: data, training, write);
- ``overhead`` = wait - train, split into ``queue`` (child created -> started: worker poll + free slot),
  ``startup`` (child started -> its lora task started: process spawn, imports, model load),
  ``finish`` (child's task ended -> child ended) and ``notice`` (child ended -> parent task ended: polling).

In-process, the same task's body is ``train``, with no overhead beyond waiting for the one model copy.
Writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

OUT = Path(__file__).resolve().parent / "results"
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _config(model: str, store: str, n: int):
    from mace_core.config import MaceConfig

    return MaceConfig.model_validate({
        "name": f"bench-{n}", "seed": 7,
        "concepts": [{"name": c, "type": "object", "mapping": "forest"} for c in NAMES[:n]],
        "model": {"path": model}, "prompts": {"num_prompts": 4},
        "images": {"num_images": 2, "steps": 2, "batch_size": 2}, "masks": {"backend": "attention"},
        "prior": {"captions": "miniworld", "shard_size": 5, "batch_size": 4},
        "cfr": {"lam": 100.0}, "fusion": {"lam": 100.0}, "lora": {"steps": 2, "learning_rate": 1e-3},
        "execution": {"store": store, "retries": 1, "retry_delay_s": 1},
    })


def _task_runs(client, flow_run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {t.name: t for t in runs}


def _secs(a, b) -> float:
    return (b - a).total_seconds()


def measure(n: int, model: str, work: Path) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.erase import erase

    # 1. in-process
    cfg = _config(model, str(work / f"store-local-{n}"), n)
    os.environ.pop("MACE_LORA_DEPLOYMENT", None)
    t0 = time.perf_counter()
    st = erase(cfg, return_state=True)
    local_wall = time.perf_counter() - t0
    with get_client(sync_client=True) as c:
        local = _task_runs(c, st.state_details.flow_run_id)
    local_train = [_secs(local[f"lora-{x}"].start_time, local[f"lora-{x}"].end_time) for x in NAMES[:n]]
    # 2. remote
    cfg = _config(model, str(work / f"store-remote-{n}"), n)
    os.environ["MACE_LORA_DEPLOYMENT"] = "mace-train-lora/gpu"
    os.environ["MACE_REMOTE_POLL_S"] = "1"
    try:
        t0 = time.perf_counter()
        st = erase(cfg, return_state=True)
        remote_wall = time.perf_counter() - t0
    finally:
        os.environ.pop("MACE_LORA_DEPLOYMENT", None)
    jobs = []
    with get_client(sync_client=True) as c:
        parent = _task_runs(c, st.state_details.flow_run_id)
        for x in NAMES[:n]:
            children = [r for r in c.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"lora-{x}"]))) if r.parameters.get("store") == cfg.execution.store]
            child = max(children, key=lambda r: r.created)
            ct = _task_runs(c, child.id)[f"lora-{x}"]
            p = parent[f"lora-{x}"]
            wait, train = _secs(p.start_time, p.end_time), _secs(ct.start_time, ct.end_time)
            jobs.append({"concept": x, "wait": wait, "train": train, "overhead": wait - train,
                         "queue": _secs(child.created, child.start_time),
                         "startup": _secs(child.start_time, ct.start_time),
                         "finish": _secs(ct.end_time, child.end_time),
                         "notice": _secs(child.end_time, p.end_time),
                         "worker": child.labels.get("prefect.worker.name")})
    mean = {k: statistics.fmean(j[k] for j in jobs) for k in ("wait", "train", "overhead", "queue", "startup",
                                                               "finish", "notice")}
    return {"concepts": n, "in_process": {"wall_s": local_wall, "train_mean_s": statistics.fmean(local_train)},
            "remote": {"wall_s": remote_wall, "mean_s": mean, "jobs": jobs}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from mace_cli import ops
    from tests.tiny_sd.conftest import build_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="mace-bench-dist-"))
    model = str(work / "tiny-sd1")
    build_tiny_pipeline("sd1", seed=0).save_pretrained(model, safe_serialization=True)
    srv = ops.LocalServer(work / "prefect-home", auth=f"mace:{secrets.token_urlsafe(16)}").start(timeout_s=300)
    procs = []
    results = []
    try:
        with srv.settings():
            ops.setup(gpu_slots=args.workers, pools=("cpu", "gpu"))
            ops.deploy_names(["train_lora/gpu"])
            procs = [ops.start_worker(srv.env, "gpu", f"bench-{i}", work,
                                      extra_env={"PREFECT_WORKER_QUERY_SECONDS": "1"}) for i in range(args.workers)]
            for n in args.concepts:
                results.append(measure(n, model, work))
                print(json.dumps(results[-1]["remote"]["mean_s"]), flush=True)
    finally:
        for p in procs:
            ops.stop_tree(p)
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)  # the model, the server's database and the stores
    setup = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
             "model": "tiny random SD1 (tests/tiny_sd), lora.steps=2", "workers": f"{args.workers} process workers, "
             "PREFECT_WORKER_QUERY_SECONDS=1, MACE_REMOTE_POLL_S=1, same machine as server and parent"}
    OUT.mkdir(exist_ok=True)
    (OUT / "distributed.json").write_text(json.dumps({"setup": setup, "results": results}, indent=1, default=str))
    lines = ["| concepts | in-process wall s | remote wall s | train s/job (in-process) | train s/job (remote) | "
             "overhead s/job | queue | start-up | finish | notice |", "|" + "---|" * 10]
    for r in results:
        m = r["remote"]["mean_s"]
        lines.append(f"| {r['concepts']} | {r['in_process']['wall_s']:.1f} | {r['remote']['wall_s']:.1f} | "
                     f"{r['in_process']['train_mean_s']:.1f} | {m['train']:.1f} | {m['overhead']:.1f} | "
                     f"{m['queue']:.1f} | {m['startup']:.1f} | {m['finish']:.1f} | {m['notice']:.1f} |")
    md = "# Distributed LoRA jobs: overhead per job\n\n" + "\n".join(f"- {k}: {v}" for k, v in setup.items())
    md += "\n\n" + "\n".join(lines) + "\n"
    md += ("\nOverhead = the parent's wait for a job minus the job's own LoRA task. `queue` (child created -> started)"
           " includes waiting for a free worker: N jobs share the workers, so it grows with N. `start-up`, `finish`"
           " and `notice` are the per-job cost of running as a separate flow run. Command: "
           "`PYTHONPATH=. python -m benchmarks.distributed --concepts 3 10`.\n")
    (OUT / "distributed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
