"""Stage ``lora`` on a remote worker: the same task contract as :func:`tasks.lora.lora_task`, one flow run each.

:func:`remote_lora_task` computes the LoRA artifact key exactly as ``lora_task`` does. A store hit returns the
ref at once (no job is started). On a miss it starts the ``mace-train-lora`` deployment with
``run_deployment`` and waits for it, then reads the ref from the shared store (prefect_notes.md §2.3).

Idempotency: the key of a child run is ``f"{parent_flow_run_id}:{artifact_key}"``, so a retried *parent*
(same flow run) re-attaches to its child instead of training twice, while another run never inherits an
old failed child (a bare content hash would return that failed run forever). A *task retry* after a crashed
child (dead worker) must start a new child, so attempts after the first append ``:attempt-<n>``.

Where it runs is set by the environment of the parent process, never by the config (nothing here changes
an artifact key): ``MACE_LORA_DEPLOYMENT`` and ``MACE_REMOTE_POLL_S``. :func:`lora_runner` is the switch the
erase flow reads: ``MACE_LORA_DEPLOYMENT`` set (e.g. ``mace-train-lora/gpu``) sends every LoRA miss to that
deployment; unset, empty or ``local``, LoRAs train in-process with :func:`tasks.lora.lora_task`.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger, task

from mace_core.concepts import Concept
from mace_core.config import LoraConfig, ModelConfig
from mace_core.seeds import concept_seed
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, key_for, open_store
from tasks.lora import STAGE, VERSION

DEFAULT_DEPLOYMENT = "mace-train-lora/gpu"
LOCAL = ("", "local", "in-process", "none")


def lora_deployment() -> str | None:
    """The deployment LoRA jobs go to (``MACE_LORA_DEPLOYMENT``), or None: train in-process."""
    value = os.environ.get("MACE_LORA_DEPLOYMENT", "").strip()
    return None if value.lower() in LOCAL else value


def lora_runner() -> Any:
    """The LoRA task of this process: :func:`remote_lora_task` when a deployment is named, else ``lora_task``.

    Remote jobs need a Prefect server that workers poll: with ``MACE_LORA_DEPLOYMENT`` set but no
    ``PREFECT_API_URL`` (an ephemeral in-process API) no worker could ever pick a job up, so this fails at
    once with a one-line ValueError instead of waiting forever.
    """
    from tasks.lora import lora_task

    deployment = lora_deployment()
    if deployment is None:
        return lora_task
    if "/" not in deployment:
        raise ValueError(f"MACE_LORA_DEPLOYMENT={deployment!r} is not '<flow name>/<deployment name>' "
                         f"(e.g. {DEFAULT_DEPLOYMENT!r}); unset it to train LoRAs in-process")
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise ValueError(f"MACE_LORA_DEPLOYMENT={deployment!r} sends LoRA jobs to workers, but no Prefect server "
                         "is set: export PREFECT_API_URL (and PREFECT_API_AUTH_STRING), or unset "
                         "MACE_LORA_DEPLOYMENT to train in-process")
    return remote_lora_task


def shared_store_url(store_root: str) -> str:
    """The store as a worker must see it: a local relative path made absolute (workers have another cwd)."""
    if "://" in store_root:
        return store_root
    from pathlib import Path

    return str(Path(store_root).expanduser().resolve())


class RemoteJobCrashed(RuntimeError):
    """The child run crashed (worker or infrastructure died): transient, the task retry re-submits."""


class RemoteJobFailed(ValueError):
    """The child run failed or was cancelled, or the deployment refused it: permanent, not retried."""


def lora_key(concept: Concept, seed: int, prompts: st.ArtifactRef, images: st.ArtifactRef,
             masks: st.ArtifactRef | None, base: st.ArtifactRef, cfg: LoraConfig, model: ModelConfig,
             model_digest: str) -> str:
    """The artifact key :func:`tasks.lora.lora_task` computes for these inputs (kept in step by a test)."""
    config = {"lora": cfg, "seed_k": concept_seed(seed, concept.name), "dtype": model.dtype}
    inputs = {"model": model_digest, "prompts": prompts.digest, "images": images.digest,
              "masks": masks.digest if masks is not None else "", "base": base.digest}
    return key_for(STAGE, VERSION, config, inputs)


def child_parameters(concept: Concept, seed: int, prompts: st.ArtifactRef, images: st.ArtifactRef,
                     masks: st.ArtifactRef | None, base: st.ArtifactRef, cfg: LoraConfig, model: ModelConfig,
                     model_digest: str, store_root: str) -> dict[str, Any]:
    """The JSON parameters of a ``mace-train-lora`` run (refs travel as ``"<stage>/<key>"`` ids)."""
    return {"concept": concept.model_dump(mode="json"), "seed": seed, "prompts": prompts.id,
            "images": images.id, "masks": masks.id if masks is not None else None, "base": base.id,
            "lora": cfg.model_dump(mode="json"), "model": model.model_dump(mode="json"),
            "model_digest": model_digest, "store": store_root}


def idempotency_key(flow_run_id: str, key: str, attempt: int) -> str:
    """``parent:key`` on the first attempt; a task retry gets a new scope so a crashed child is re-run."""
    return f"{flow_run_id}:{key}" if attempt <= 1 else f"{flow_run_id}:{key}:attempt-{attempt}"


def _run_scope() -> tuple[str, int]:
    """(parent flow run id, this task run's attempt number) from the Prefect run context."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None:  # called as a plain function (.fn): a scope of its own
        import uuid

        return uuid.uuid4().hex, 1
    tr = ctx.task_run
    return str(tr.flow_run_id or tr.id), max(int(tr.run_count or 1), 1)


def start_child(deployment: str, parameters: dict[str, Any], idem: str, concept: str) -> Any:
    """``run_deployment`` and wait; one-line errors for a missing deployment or refused parameters."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        return run_deployment(deployment, parameters=parameters, idempotency_key=idem, timeout=None,
                              poll_interval=float(os.environ.get("MACE_REMOTE_POLL_S", "2")),
                              flow_run_name=f"lora-{concept}", tags=["mace", f"concept:{concept}"])
    except ObjectNotFound:
        raise RemoteJobFailed(f"deployment {deployment!r} not found: run `mace deploy` (or `prefect deploy "
                              "--all`) or set MACE_LORA_DEPLOYMENT to an existing one") from None
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code in (409, 422):
            detail = exc.response.json().get("detail", exc.response.text) if exc.response.content else ""
            raise RemoteJobFailed(f"deployment {deployment!r} rejected the LoRA job of concept {concept!r}: "
                                  f"{' '.join(str(detail).split())}") from None
        raise


@task(name="lora", task_run_name="lora-{concept.name}", **TASK_OPTIONS)
def remote_lora_task(concept: Concept, seed: int, prompts: st.ArtifactRef, images: st.ArtifactRef,
                     masks: st.ArtifactRef | None, base: st.ArtifactRef, cfg: LoraConfig, model: ModelConfig,
                     model_digest: str, store_root: str, concurrency: int = 1) -> st.ArtifactRef:
    """As :func:`tasks.lora.lora_task`, but a miss trains in a ``mace-train-lora`` flow run on a worker.

    ``concurrency`` is accepted for signature compatibility; remote slots are the GPU pool's concurrency
    limit and each worker's ``--limit``.
    """
    store = open_store(store_root)
    key = lora_key(concept, seed, prompts, images, masks, base, cfg, model, model_digest)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        # 1. one child flow run per (parent run, artifact key, attempt)
        deployment = lora_deployment() or DEFAULT_DEPLOYMENT
        parent, attempt = _run_scope()
        params = child_parameters(concept, seed, prompts, images, masks, base, cfg, model, model_digest,
                                  shared_store_url(store_root))
        run = start_child(deployment, params, idempotency_key(parent, key, attempt), concept.name)
        # 2. the child's verdict; its artifact is read back from the shared store, never from Prefect
        state = run.state
        where = f"child flow run {run.name!r} ({run.id}) of {deployment!r}"
        if state is None or not state.is_completed():
            name = state.name if state is not None else "unknown"
            msg = " ".join(str(state.message or "").split()) if state is not None else ""
            err = RemoteJobCrashed if state is not None and state.is_crashed() else RemoteJobFailed
            raise err(f"LoRA job for concept {concept.name!r} ended {name}: {where}: {msg or 'no message'}; "
                      "see that run's logs in the UI")
        ref = store.get(STAGE, key, verify=True)
        if ref is None:
            raise RemoteJobFailed(f"{where} completed but lora/{key} is not in {store.root_url}: the worker "
                                  "wrote to another store; give workers the same shared execution.store URL")
        get_run_logger().info("lora %s: trained remotely by %s", concept.name, where)
        return ref
