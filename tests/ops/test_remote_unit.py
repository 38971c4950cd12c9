"""Fast checks of the remote LoRA path (no server): key parity with lora_task, parameters, idempotency keys."""

from __future__ import annotations

import contextlib
import json

import pytest

from mace_core.concepts import Concept
from mace_core.config import LoraConfig, ModelConfig
from tasks import remote
from tasks.store import ArtifactRef


def _ref(stage: str, ch: str) -> ArtifactRef:
    return ArtifactRef(stage, ch * 64, ch * 64)


ARGS = dict(concept=Concept(name="cat", type="object", mapping="forest"), seed=7, prompts=_ref("prompts", "a"),
            images=_ref("images", "b"), masks=_ref("masks", "c"), base=_ref("cfr_concept", "d"),
            cfg=LoraConfig(steps=3), model=ModelConfig(), model_digest="e" * 64)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("masks", ["with", "without"])
def test_lora_key_matches_lora_task(monkeypatch, tmp_path, masks):
    """The key remote_lora_task checks (and the child recomputes) is the one lora_task computes."""
    import tasks.lora as tl

    seen = {}

    @contextlib.contextmanager
    def capture(store, stage, key, concept):
        seen["key"] = key
        raise _Stop
        yield  # pragma: no cover

    monkeypatch.setattr(tl, "cached_stage", capture)
    args = {**ARGS, "masks": ARGS["masks"] if masks == "with" else None}
    with pytest.raises(_Stop):
        tl.lora_task.fn(**args, store_root=str(tmp_path))
    assert seen["key"] == remote.lora_key(**args)


def test_child_parameters_are_json_and_validate_as_flow_parameters(tmp_path):
    from flows.train_lora import train_lora

    params = remote.child_parameters(**ARGS, store_root=str(tmp_path))
    assert json.loads(json.dumps(params)) == params
    assert params["prompts"] == "prompts/" + "a" * 64
    validated = train_lora.validate_parameters(params)
    assert validated["lora"] == ARGS["cfg"] and validated["concept"] == ARGS["concept"]


def test_idempotency_key_is_parent_scoped_and_retry_gets_a_new_scope():
    assert remote.idempotency_key("run1", "k" * 64, 1) == f"run1:{'k' * 64}"
    assert remote.idempotency_key("run1", "k" * 64, 2) != remote.idempotency_key("run1", "k" * 64, 1)
    assert remote.idempotency_key("run2", "k" * 64, 1) != remote.idempotency_key("run1", "k" * 64, 1)


def test_committed_templates_request_gpus():
    from mace_cli import ops

    docker = ops.base_job_template("gpu-docker")
    assert docker["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    req = docker["variables"]["properties"]["container_create_kwargs"]["default"]["device_requests"][0]
    assert req["capabilities"] == [["gpu"]]
    k8s = ops.base_job_template("gpu-k8s")
    pod = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_limit }}"
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"


def test_prefect_yaml_entrypoints_exist():
    import yaml

    from mace_cli.ops import REPO

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        path, fn = d["entrypoint"].split(":")
        assert f"def {fn}(" in (REPO / path).read_text(), d["entrypoint"]
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"


def test_watcher_builds_the_add_request(tmp_path):
    from mace_cli import ops

    f = tmp_path / "concepts.txt"
    f.write_text("cat,object,forest\ndog\n# comment\n")
    req = ops.add_request(f, "prod", "s3://b/m", recorded=["cat", "horse"])
    assert [c["name"] for c in req["add"]] == ["dog"] and req["remove"] == ["horse"]
    assert ops.add_request(f, "prod", "x", recorded=["cat", "dog"]) is None


def test_lora_runner_switch(monkeypatch):
    """MACE_LORA_DEPLOYMENT picks remote LoRA jobs; unset/'local' trains in-process; no server fails in one line."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.lora import lora_task

    monkeypatch.delenv("MACE_LORA_DEPLOYMENT", raising=False)
    assert remote.lora_runner() is lora_task
    monkeypatch.setenv("MACE_LORA_DEPLOYMENT", "local")
    assert remote.lora_runner() is lora_task
    monkeypatch.setenv("MACE_LORA_DEPLOYMENT", "mace-train-lora/gpu")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert remote.lora_runner() is remote.remote_lora_task
    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(ValueError, match="PREFECT_API_URL"):
        remote.lora_runner()
    monkeypatch.setenv("MACE_LORA_DEPLOYMENT", "gpu")
    with pytest.raises(ValueError, match="'<flow name>/<deployment name>'"):
        remote.lora_runner()


def test_child_store_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert remote.shared_store_url("artifacts") == str(tmp_path / "artifacts")
    assert remote.shared_store_url("s3://bucket/mace") == "s3://bucket/mace"


def test_watch_once_starts_add_for_the_recorded_difference(tmp_path, monkeypatch):
    """A changed concept file starts mace-add with exactly the difference to the run's recorded concepts."""
    import prefect.deployments

    from mace_cli import ops
    from tasks._cache import open_store

    store = str(tmp_path / "store")
    open_store(store).record_run("prod", [], {"concepts": ["cat", "horse"]})
    f = tmp_path / "concepts.txt"
    f.write_text("cat\ndog,object,forest\n")
    started = []

    class Run:
        name = "add-prod"

    def fake_run_deployment(name, parameters, **kw):
        started.append((name, parameters, kw["idempotency_key"]))
        return Run()

    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run_deployment)
    digest = ops.watch_once(f, "prod", store, last_digest="")
    assert digest == ops.file_digest(f) and len(started) == 1
    name, params, idem = started[0]
    assert name == "mace-add/default" and idem == f"concepts:prod:{digest}"
    assert [c["name"] for c in params["req"]["add"]] == ["dog"] and params["req"]["remove"] == ["horse"]
    assert ops.watch_once(f, "prod", store, last_digest=digest) == digest and len(started) == 1  # unchanged


def test_deployed_flows_validate_parameters_and_nightly_defaults_are_valid():
    """A deployment run hands a flow JSON: each deployed flow must validate it into its pydantic types (a flow
    with validate_parameters=False would get dicts and fail on ``cfg.name``), and the nightly defaults parse."""
    import importlib

    import yaml

    from mace_cli.ops import REPO

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        path, fn = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)
        assert flow.should_validate_parameters, d["entrypoint"]
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    text = json.dumps(nightly["parameters"]).replace("{{ $MACE_EVAL_MODEL }}", "miniworld")
    params = json.loads(text.replace("{{ $MACE_STORE }}", "artifacts"))
    flow = importlib.import_module("flows.evaluate").evaluate
    assert [c.name for c in flow.validate_parameters(params)["cfg"].erased] == ["cat", "dog", "ship"]
