"""LoRA jobs on Prefect workers: an authenticated server on 127.0.0.1, a process pool, two workers.

An erase of 3 concepts runs in this process with ``MACE_LORA_DEPLOYMENT=mace-train-lora/gpu`` (the erase
flow's switch, ``tasks.remote.lora_runner``); every LoRA then runs as its own ``mace-train-lora`` flow run on
a worker and writes to a shared local store. The LoRA artifacts and the final
model must be byte-identical to an in-process erase of the same config. Then one worker is killed (with its
flow-run process, as a dead host) mid-job: the zombie automation marks the run Crashed, the parent task's
retry re-submits under a new idempotency scope, the other worker trains it, and the result is unchanged.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from mace_cli import ops
from tests.flows.conftest import final_weights, make_config, same_weights
from tests.ops.conftest import wait_for

pytestmark = pytest.mark.slow

CONCEPTS = ("cat", "dog", "horse")
GPU_SLOTS = 2
WORKERS = ("worker-a", "worker-b")


@pytest.fixture(scope="module")
def cluster(server, tmp_path_factory):
    """Pools + GPU limit + zombie automation, the train_lora deployment, two process workers."""
    ops.setup(gpu_slots=GPU_SLOTS, pools=("cpu", "gpu"), zombie_within_s=45)
    ops.deploy_names(["train_lora/gpu"])
    logs = tmp_path_factory.mktemp("worker_logs")
    procs = {n: ops.start_worker(server.env, "gpu", n, logs, extra_env={"PREFECT_WORKER_QUERY_SECONDS": "1"})
             for n in WORKERS}
    yield procs, logs
    for p in procs.values():
        ops.stop_tree(p, grace_s=15)


def lora_runs(since: float | None = None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["mace-train-lora"])))
    return [r for r in runs if since is None or r.created.timestamp() >= since]


def lora_bytes(store: str, ref_id: str) -> dict[str, bytes]:
    d = Path(store) / ref_id
    return {p.name: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def in_process(server, tiny_model, tmp_path_factory):
    """The reference: the whole erase in this process (same server, no workers involved)."""
    from flows.erase import erase

    store = str(tmp_path_factory.mktemp("store_local"))
    cfg = make_config(tiny_model, store, concepts=CONCEPTS, execution={"store": store, "retries": 2,
                                                                       "retry_delay_s": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MACE_LORA_DEPLOYMENT", raising=False)  # the switch off: LoRAs train in this process
        return cfg, store, erase(cfg)


def remote_erase(monkeypatch, cfg):
    """The erase flow with its switch on: ``MACE_LORA_DEPLOYMENT`` sends LoRA jobs to the gpu pool."""
    from flows.erase import erase

    monkeypatch.setenv("MACE_LORA_DEPLOYMENT", "mace-train-lora/gpu")
    monkeypatch.setenv("MACE_REMOTE_POLL_S", "1")
    return erase(cfg)


def test_lora_jobs_run_on_workers_and_equal_in_process(cluster, in_process, tmp_path, monkeypatch):
    cfg_a, store_a, report_a = in_process
    store_b = str(tmp_path / "shared_store")
    cfg_b = cfg_a.model_copy(update={"execution": cfg_a.execution.model_copy(update={"store": store_b})})
    t0 = time.time()
    report_b = remote_erase(monkeypatch, cfg_b)
    # 1. three separate mace-train-lora flow runs, completed, on the workers
    runs = lora_runs(since=t0 - 1)
    assert sorted(r.name for r in runs) == [f"lora-{c}" for c in sorted(CONCEPTS)], [r.name for r in runs]
    assert all(r.state.is_completed() for r in runs), [(r.name, r.state.name) for r in runs]
    workers = {r.labels.get("prefect.worker.name") for r in runs}
    assert workers == set(WORKERS), workers
    assert {c: s["lora"] for c, s in report_b.concept_stages.items()} == {c: "miss" for c in CONCEPTS}
    # 2. same LoRA keys, byte-identical LoRA files, and the same final model as the in-process run
    lora_ids = sorted(v for k, v in report_a.refs.items() if k.startswith("lora/"))
    assert lora_ids == sorted(v for k, v in report_b.refs.items() if k.startswith("lora/"))
    for rid in lora_ids:
        assert lora_bytes(store_a, rid) == lora_bytes(store_b, rid), rid
    assert same_weights(final_weights(store_a, report_a), final_weights(store_b, report_b))
    # 3. a rerun is all store hits: no new child runs
    t1 = time.time()
    again = remote_erase(monkeypatch, cfg_b)
    assert lora_runs(since=t1) == []
    assert all(v == "hit" for row in again.concept_stages.values() for v in row.values()), again.concept_stages


@pytest.mark.timeout(1800)  # the zombie automation alone needs 45-75 s; 2 shared cores are slow
def test_killed_worker_job_is_retried_and_result_unchanged(server, cluster, in_process, tmp_path, monkeypatch):
    """A worker (with its flow-run process) dies while its LoRA job is Running: the job is retried elsewhere.

    To kill a job that is surely still running (a tiny LoRA trains in a second or two), the test holds every
    slot of the ``gpu`` limit first: the children start, go Running, heartbeat, and wait for a GPU slot. One
    worker is killed; once the zombie automation has marked its run Crashed the slots are released, and the
    parent's retry trains that concept on the other worker.
    """
    from prefect.concurrency.sync import concurrency

    procs, logs = cluster
    cfg_a, store_a, report_a = in_process
    # upstream artifacts from the reference run; LoRA, fusion and export must be recomputed
    store_c = str(tmp_path / "store_kill")
    shutil.copytree(store_a, store_c)
    from tasks._cache import open_store

    st = open_store(store_c)
    for stage in ("lora", "fusion", "export"):
        for rid in [v for k, v in report_a.refs.items() if k.split("/")[0] == stage]:
            st.delete(*rid.split("/"))
    cfg_c = cfg_a.model_copy(update={"execution": cfg_a.execution.model_copy(update={"store": store_c})})
    t0 = time.time()
    killed: dict[str, object] = {}
    held, release = threading.Event(), threading.Event()

    def hold_gpu_slots():
        with server.settings(), concurrency("gpu", occupy=GPU_SLOTS, strict=True):
            held.set()
            release.wait(900)

    def killer():
        with server.settings():
            kill_one_running_job()

    def kill_one_running_job():
        def running():
            return next((r for r in lora_runs(since=t0 - 1) if r.state.is_running()
                         and r.labels.get("prefect.worker.name") in procs), None)

        try:
            run = wait_for(running, 600, what="a running LoRA job", every=0.5)
            time.sleep(3)  # its first heartbeat (sent as the run starts) reaches the server
            name = run.labels["prefect.worker.name"]
            ops.kill_tree(procs[name].pid)  # worker + its flow-run process: a dead host
            killed.update(run=run, worker=name, at=time.time())
            wait_for(lambda: next(r for r in lora_runs(since=t0 - 1) if r.id == run.id).state.is_crashed(), 300,
                     what="the zombie automation to mark the killed job Crashed")
            killed["crashed_at"] = time.time()
        finally:
            release.set()  # the GPU slots: the surviving worker trains everything, the retried job included

    # threads start with an empty context: each enters the server's settings (or talks to an ephemeral API)
    holder = threading.Thread(target=hold_gpu_slots, daemon=True)
    holder.start()
    assert held.wait(60), "could not take the gpu slots"
    th = threading.Thread(target=killer, daemon=True)
    th.start()
    report_c = remote_erase(monkeypatch, cfg_c)
    th.join(timeout=5)
    holder.join(timeout=30)
    assert killed, "no LoRA job was running to kill"
    runs = {r.id: r for r in lora_runs(since=t0 - 1)}
    victim = runs[killed["run"].id]
    assert victim.state.is_crashed(), victim.state
    # the victim's concept was re-submitted (a new flow run, new idempotency scope) and completed elsewhere
    again = [r for r in runs.values() if r.name == victim.name and r.id != victim.id]
    assert len(again) == 1 and again[0].state.is_completed(), [(r.name, r.state.name) for r in runs.values()]
    assert again[0].labels.get("prefect.worker.name") != killed["worker"]
    crash_to_done = again[0].end_time.timestamp() - killed["at"]
    print(f"\nkilled {killed['worker']} running {victim.name}; crashed after "
          f"{killed['crashed_at'] - killed['at']:.0f} s; re-run done {crash_to_done:.0f} s after the kill")
    assert same_weights(final_weights(store_a, report_a), final_weights(store_c, report_c))
    for rid in (v for k, v in report_a.refs.items() if k.startswith("lora/")):
        assert lora_bytes(store_a, rid) == lora_bytes(store_c, rid), rid
