"""Flow-test fixtures: one Prefect test harness per session, a fresh artifact store per test, a tiny model.

The model is the seeded random SD1-shaped pipeline of ``tests/tiny_sd`` saved once per session; every
stage runs for real on it (a few sampler / LoRA steps), so the whole folder takes a few minutes on 2 cores.
"""

from __future__ import annotations

import os

import pytest

from tests.data_stages.conftest import llm_server  # noqa: F401 - the scripted LLM server fixture, shared with tests/flows

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

CAPTIONS = [
    "a red car parked on a street", "a small dog running in a meadow", "a cat sleeping on a sofa",
    "a ship sailing at sunset", "a horse standing in a field", "a bird on a branch", "a truck on a highway",
    "a frog on a leaf", "a deer in the snow", "an airplane in the sky", "a painting of a quiet harbour",
    "two people walking on a beach",
]


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    """A private Prefect API for the session (the server start is the slow part: ~20 s on 2 cores)."""
    from tests.flows.harness import shared_harness

    with shared_harness():
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Directory of a saved tiny SD1 pipeline (built once per session, read through load_pipeline)."""
    from tests.tiny_sd.conftest import build_tiny_pipeline

    path = tmp_path_factory.mktemp("flows_model") / "sd1"
    build_tiny_pipeline("sd1", seed=0).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="session")
def captions_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def store_root(tmp_path) -> str:
    """A fresh artifact store per test (Prefect's own result storage is never used)."""
    return str(tmp_path / "store")


def make_config(model: str, store: str, concepts=("cat", "dog"), **over):
    """A small but complete config: every stage runs, with few steps."""
    from mace_core.config import MaceConfig

    data = {
        "name": "test-run",
        "seed": 7,
        "concepts": [{"name": c, "type": "object", "mapping": "forest"} if isinstance(c, str) else c
                     for c in concepts],
        "model": {"path": model},
        "prompts": {"num_prompts": 4},
        "images": {"num_images": 2, "steps": 2, "batch_size": 2},
        "masks": {"backend": "attention"},
        "prior": {"captions": "miniworld", "shard_size": 5, "batch_size": 4},
        "cfr": {"lam": 1.0},
        "lora": {"steps": 2, "learning_rate": 1e-3},
        "fusion": {"lam": 1.0},
        "execution": {"store": store, "retries": 0, "retry_delay_s": 0},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return MaceConfig.model_validate(data)


@pytest.fixture
def counting(monkeypatch):
    """Count calls into mace_core's expensive functions (model work) made by the tasks."""
    from mace_core import generate, lora, masks, text_stats

    calls: dict[str, int] = {}

    def wrap(mod, name):
        fn = getattr(mod, name)

        def counted(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)

        monkeypatch.setattr(mod, name, counted)

    for mod, name in ((generate, "generate_images"), (lora, "train_concept_lora"), (masks, "attention_masks"),
                      (text_stats, "concept_statistics_from_pipeline"), (text_stats, "prior_gram")):
        wrap(mod, name)
    return calls


def final_weights(store: str, report) -> dict:
    """The fused weights of a finished run (bytes as stored)."""
    from tasks._cache import open_store
    from tasks.fusion import load_weights

    st = open_store(store)
    stage, key = report.refs["fusion"].split("/")
    return load_weights(st, st.get(stage, key))


def same_weights(a: dict, b: dict) -> bool:
    """Bitwise equality (torch.equal would call -0.0 and 0.0 equal)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and a[k].contiguous().numpy().tobytes() == b[k].contiguous().numpy().tobytes() for k in a)

