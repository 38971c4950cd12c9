"""Hostile names never become paths: clear one-line StoreError, nothing written outside the root."""

from __future__ import annotations

import json
import time
import os
from pathlib import Path

import pytest

from tasks.store import _seal
from tasks.store import (ArtifactCorrupt, ArtifactRef, ArtifactStore, StoreError, artifact_key, check_key,
                         check_stage)

from ._helpers import put

HOSTILE = [
    "../../etc/passwd", "..", ".", "", "/abs", "a/b", "a\x00b", "lora\x00", "a\nb", "lora\n", "x" * 10_000,
    "lora\u202e", "\u202elora", "LoRA", "lora ", "l;rm -rf ~", "$(touch pwned)", "lora/../../x", "ｌｏｒａ",
    "runs", None, 3, b"lora",
]
GOOD_KEY = "a" * 64


def _snapshot(base: Path) -> set[str]:
    return {str(p) for p in base.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[ArtifactStore, Path]:
    """A store at tmp/inner/root, so that escapes to tmp/inner or tmp are visible."""
    root = tmp_path / "inner" / "root"
    return ArtifactStore(root), tmp_path


def _assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert "\n" not in text and "\x00" not in text and "\u202e" not in text and len(text) < 600, text


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda v: repr(v)[:20])
def test_hostile_stage_rejected_everywhere(sandbox: tuple[ArtifactStore, Path], bad: object) -> None:
    store, base = sandbox
    before = _snapshot(base)
    calls = [
        lambda: check_stage(bad),
        lambda: artifact_key(bad, "1", {}, {}),  # type: ignore[arg-type]
        lambda: store.has(bad, GOOD_KEY),  # type: ignore[arg-type]
        lambda: store.get(bad, GOOD_KEY),  # type: ignore[arg-type]
        lambda: store.delete(bad, GOOD_KEY),  # type: ignore[arg-type]
        lambda: ArtifactRef(bad, GOOD_KEY, GOOD_KEY),  # type: ignore[arg-type]
        lambda: store.writer(bad, GOOD_KEY).__enter__(),  # type: ignore[arg-type]
    ]
    if bad is not None:  # ls(None) means every stage
        calls += [lambda: store.ls(bad), lambda: store.verify(bad)]  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(StoreError, match="invalid stage name") as info:
            call()
        _assert_one_line(info.value)
    assert _snapshot(base) == before


@pytest.mark.parametrize("bad", HOSTILE + ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "a" * 63 + "\n"],
                         ids=lambda v: repr(v)[:20])
def test_hostile_key_rejected_everywhere(sandbox: tuple[ArtifactStore, Path], bad: object) -> None:
    store, base = sandbox
    before = _snapshot(base)
    calls = [
        lambda: check_key(bad),
        lambda: store.has("lora", bad),  # type: ignore[arg-type]
        lambda: store.get("lora", bad),  # type: ignore[arg-type]
        lambda: store.delete("lora", bad),  # type: ignore[arg-type]
        lambda: ArtifactRef("lora", bad, GOOD_KEY),  # type: ignore[arg-type]
        lambda: store.writer("lora", bad).__enter__(),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(StoreError, match="invalid artifact key") as info:
            call()
        _assert_one_line(info.value)
    assert _snapshot(base) == before


@pytest.mark.parametrize("bad", ["../../etc/passwd", "..", ".hidden", "a/b", "a\x00b", "a\nb", "x" * 10_000,
                                 "run\u202e", "", "-flag", None], ids=lambda v: repr(v)[:20])
def test_hostile_run_id_rejected(sandbox: tuple[ArtifactStore, Path], bad: object) -> None:
    store, base = sandbox
    before = _snapshot(base)
    for call in (lambda: store.record_run(bad, [], {}), lambda: store.read_run(bad),  # type: ignore[arg-type]
                 lambda: store.gc(keep_runs=[bad])):  # type: ignore[list-item]
        with pytest.raises(StoreError, match="invalid run id") as info:
            call()
        _assert_one_line(info.value)
    assert _snapshot(base) == before


@pytest.mark.parametrize("concept", ["../../etc/passwd", "cat\x00", "cat\nrm -rf /", "\u202egod", "x" * 10_000])
def test_user_strings_are_data_not_paths(sandbox: tuple[ArtifactStore, Path], concept: str) -> None:
    """A concept name goes into config (and so into the key and manifest) but never into a path."""
    store, base = sandbox
    config = {"concept": concept}
    key = artifact_key("prompts", "1", config, {})
    with store.writer("prompts", key, config=config) as d:
        (d / "table.parquet").write_bytes(b"rows")
    ref = store.get("prompts", key)
    assert ref is not None and store.manifest(ref)["config"]["concept"] == concept
    root = Path(store.root_url[len("file://"):])
    assert {p.relative_to(base).as_posix() for p in base.rglob("*") if not p.is_dir()} == {
        f"inner/root/prompts/{key}/table.parquet", f"inner/root/prompts/{key}/manifest.json"}
    assert all(p.name.isascii() for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["..evil", ".hidden", "concept name.png", "ünï.png", "x\u202e.png", "a" * 200])
def test_unsafe_file_names_rejected(sandbox: tuple[ArtifactStore, Path], name: str) -> None:
    store, _ = sandbox
    key = artifact_key("images", "1", {}, {})
    with pytest.raises(StoreError, match="not allowed") as info:
        with store.writer("images", key) as d:
            (d / name).write_bytes(b"x")
    _assert_one_line(info.value)
    assert not store.has("images", key)


def test_tampered_manifest_paths_never_escape(sandbox: tuple[ArtifactStore, Path]) -> None:
    """A manifest edited to list '../../x' is corrupt; nothing outside the artifact is read or written."""
    store, base = sandbox
    (base / "inner" / "victim.txt").write_text("do not touch")
    ref = put(store)
    mpath = store.path(ref) / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"][0]["path"] = "../../../victim.txt"
    mpath.write_bytes(_seal(m))  # an attacker who also re-seals the manifest
    with pytest.raises(ArtifactCorrupt, match="invalid file entry") as info:
        store.get(ref.stage, ref.key)
    _assert_one_line(info.value)
    assert (base / "inner" / "victim.txt").read_text() == "do not touch"
    assert [p.kind for p in store.verify()] == ["bad_manifest"]


def test_symlinked_stage_dir_is_refused(sandbox: tuple[ArtifactStore, Path]) -> None:
    store, base = sandbox
    outside = base / "outside"
    outside.mkdir()
    root = Path(store.root_url[len("file://"):])
    os.symlink(outside, root / "lora")
    key = artifact_key("lora", "1", {}, {})
    with pytest.raises(StoreError, match="symlink"):
        with store.writer("lora", key) as d:
            (d / "w.bin").write_bytes(b"x")
    assert not any(outside.iterdir())
    assert [p.kind for p in store.verify()] == ["unexpected"]


def test_memory_store_rejects_hostile_names(mem_store: ArtifactStore) -> None:
    for bad in ("../../x", "a\x00", "\u202e"):
        with pytest.raises(StoreError):
            mem_store.has(bad, GOOD_KEY)
        with pytest.raises(StoreError):
            mem_store.writer("lora", bad).__enter__()
    assert mem_store._remote_files() == {}


@pytest.mark.parametrize("field", ["api_key", "llm_api_key", "OPENAI_API_KEY", "password", "aws_secret",
                                   "access_token", "credentials"])
def test_secret_looking_config_never_reaches_a_manifest(sandbox: tuple[ArtifactStore, Path], field: str) -> None:
    store, base = sandbox
    planted = "sk-PLANTED-0123456789"
    config = {"augment": {"model": "gpt", field: planted}}
    key = artifact_key("prompts", "1", config, {})
    with pytest.raises(StoreError, match="looks like a secret") as info:
        with store.writer("prompts", key, config=config):
            pass
    assert planted not in str(info.value)
    with pytest.raises(StoreError, match="looks like a secret"):
        store.record_run("r", [], {"cfg": {field: planted}})
    assert all(planted not in p.read_text(errors="replace") for p in base.rglob("*") if p.is_file())


def test_secret_like_names_with_empty_values_are_fine(sandbox: tuple[ArtifactStore, Path]) -> None:
    store, _ = sandbox
    config = {"api_key": None, "max_tokens": 77, "token_indices": [1, 2]}
    key = artifact_key("prompts", "1", config, {})
    with store.writer("prompts", key, config=config):
        pass
    assert store.has("prompts", key)


def test_url_with_credentials_never_reaches_a_manifest(sandbox: tuple[ArtifactStore, Path]) -> None:
    store, _ = sandbox
    config = {"llm_base_url": "https://user:sk-PLANTED@llm.example/v1"}
    key = artifact_key("prompts", "1", config, {})
    with pytest.raises(StoreError, match="credentials") as info:
        with store.writer("prompts", key, config=config):
            pass
    assert "PLANTED" not in str(info.value)
    plain = {"llm_base_url": "https://llm.example:8443/v1"}  # a port is not a password
    with store.writer("prompts", artifact_key("prompts", "1", plain, {}), config=plain):
        pass


def test_secret_scan_is_linear_on_huge_values(sandbox: tuple[ArtifactStore, Path]) -> None:
    store, _ = sandbox
    config = {"blob": "x" * 200_000 + "://" * 20_000, "url": "s3://bucket/a:b@c"}  # '@' after '/': no userinfo
    key = artifact_key("prompts", "1", config, {})
    t0 = time.perf_counter()
    with store.writer("prompts", key, config=config):
        pass
    assert time.perf_counter() - t0 < 2 and store.has("prompts", key)
