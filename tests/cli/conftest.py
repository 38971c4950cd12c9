"""CLI fixtures: the shared Prefect harness, a tiny saved model, config files written per test."""

from __future__ import annotations

import pytest
import yaml


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from tests.flows.harness import shared_harness

    with shared_harness():
        yield


@pytest.fixture(scope="session")
def cli_model(tmp_path_factory) -> str:
    from tests.tiny_sd.conftest import build_tiny_pipeline

    path = tmp_path_factory.mktemp("cli_model") / "sd1"
    build_tiny_pipeline("sd1", seed=1).save_pretrained(path, safe_serialization=True)
    return str(path)


def small_config(model: str, store: str, **over) -> dict:
    data = {
        "name": "cli-run",
        "seed": 3,
        "concepts": ["cat:object:forest"],
        "model": {"path": model},
        "prompts": {"num_prompts": 3},
        "images": {"num_images": 2, "steps": 2, "batch_size": 2},
        "masks": {"backend": "none"},
        "cfr": {"lam": 1.0},
        "lora": {"steps": 1},
        "fusion": {"lam": 1.0},
        "execution": {"store": store, "retries": 0},
    }
    data.update(over)
    return data


@pytest.fixture
def write_config(tmp_path):
    def write(data: dict, name: str = "config.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return str(path)

    return write
