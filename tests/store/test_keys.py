"""Keys: stable across processes, sensitive to every part, blind to dict order; canonical JSON rules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from tasks.store import STORE_FORMAT_VERSION, StoreError, artifact_key, canonical_json

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"rank": 4, "lr": 1e-4, "targets": ["to_k", "to_v"], "nested": {"b": 2, "a": 1.5}}
INPUTS = {"images": "a" * 64, "masks": "b" * 64}


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    rank: int = 4
    lr: float = 1e-4
    path: Path = Path("x/y")


def test_canonical_json_is_sorted_compact_and_normalises_types() -> None:
    text = canonical_json({"b": (1, 2), "a": PurePosixPath("p/q"), "c": Section()})
    assert text == '{"a":"p/q","b":[1,2],"c":{"lr":0.0001,"path":"x/y","rank":4}}'
    assert json.loads(text)["b"] == [1, 2]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [1.0, math.nan]}])
def test_canonical_json_rejects_non_finite(bad: object) -> None:
    with pytest.raises(TypeError, match="finite"):
        canonical_json(bad)


def test_canonical_json_rejects_nan_inside_pydantic_model() -> None:
    # pydantic's JSON mode would silently turn NaN into null; the key must not
    with pytest.raises(TypeError, match="finite"):
        canonical_json(Section(lr=math.nan))


@pytest.mark.parametrize("bad", [object(), b"bytes", {1: "int key"}, {"x": {3j}}])
def test_canonical_json_rejects_unknown_types(bad: object) -> None:
    with pytest.raises(TypeError, match="canonical_json"):
        canonical_json(bad)


def test_key_is_hex_sha256_and_includes_format() -> None:
    key = artifact_key("lora", "1", CONFIG, INPUTS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert STORE_FORMAT_VERSION  # part of the payload; a format bump invalidates every key


def test_key_ignores_dict_order() -> None:
    reordered_config = {"nested": {"a": 1.5, "b": 2}, "targets": ["to_k", "to_v"], "lr": 1e-4, "rank": 4}
    reordered_inputs = dict(reversed(list(INPUTS.items())))
    assert artifact_key("lora", "1", CONFIG, INPUTS) == artifact_key("lora", "1", reordered_config,
                                                                    reordered_inputs)


def test_key_pydantic_equals_its_json_dump() -> None:
    model = Section()
    assert artifact_key("prior", "1", model, {}) == artifact_key("prior", "1", model.model_dump(mode="json"), {})


@pytest.mark.parametrize("change", [
    ("stage", "prior"), ("version", "2"), ("config", {**CONFIG, "rank": 8}),
    ("config", {**CONFIG, "lr": 1.0001e-4}), ("config", {**CONFIG, "nested": {"b": 2, "a": 1.25}}),
    ("config", {**CONFIG, "targets": ["to_v", "to_k"]}), ("config", {**CONFIG, "extra_field": None}),
    ("config", None), ("inputs", {**INPUTS, "images": "c" * 64}), ("inputs", {"images": "a" * 64}),
    ("inputs", {**INPUTS, "prior": "d" * 64}),
])
def test_key_changes_with_every_part(change: tuple[str, object]) -> None:
    args: dict[str, Any] = {"stage": "lora", "version": "1", "config": CONFIG, "inputs": INPUTS}
    base = artifact_key(**args)
    args[change[0]] = change[1]
    assert artifact_key(**args) != base


def test_key_stable_across_processes() -> None:
    code = ("from tasks.store import artifact_key;"
            f"print(artifact_key('lora', '1', {CONFIG!r}, {INPUTS!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == artifact_key("lora", "1", CONFIG, INPUTS)


@pytest.mark.parametrize("inputs", [{"x": 1}, {"x": None}, {1: "a"}, ["a"]])
def test_key_rejects_non_string_inputs(inputs: object) -> None:
    with pytest.raises(StoreError, match="inputs must map"):
        artifact_key("lora", "1", {}, inputs)  # type: ignore[arg-type]


def test_key_rejects_empty_version() -> None:
    with pytest.raises(StoreError, match="version"):
        artifact_key("lora", "", {}, {})


def test_store_imports_no_prefect_and_no_torch() -> None:
    """The store sits below Prefect, and `mace artifacts ls` must not pay for importing torch."""
    code = "import sys, tasks.store; print(sorted(m for m in ('prefect', 'torch', 'zarr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"
