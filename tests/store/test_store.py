"""ArtifactStore behaviour on a local root and on fsspec ``memory://``: write, read, verify, runs, gc."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tasks import store as store_mod
from tasks.store import ArtifactCorrupt, ArtifactRef, ArtifactStore, StoreError, artifact_key

from ._helpers import put


def _files_under(store: ArtifactStore) -> list[str]:
    """Every file below the root, relative (works for both backends)."""
    if store.is_local:
        root = Path(store.root_url[len("file://"):])
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())
    return sorted(store._remote_files())


# -- writing and reading ------------------------------------------------------------------------------


def test_round_trip_and_manifest(store: ArtifactStore) -> None:
    key = artifact_key("lora", "1", {"rank": 4}, {"images": "f" * 64})
    assert not store.has("lora", key) and store.get("lora", key) is None
    with store.writer("lora", key, config={"rank": 4}, inputs={"images": "f" * 64}, extra={"note": "x"},
                      version="1") as d:
        assert isinstance(d, Path) and d.is_dir() and not any(d.iterdir())
        (d / "lora.safetensors").write_bytes(b"abc")
    ref = store.get("lora", key)
    assert ref is not None and store.has("lora", key)
    assert ref.id == f"lora/{key}" and ref == ArtifactRef("lora", key, ref.digest)
    assert (store.path(ref) / "lora.safetensors").read_bytes() == b"abc"
    m = store.manifest(ref)
    assert m["key"] == key and m["stage"] == "lora" and m["version"] == "1"
    assert m["config"] == {"rank": 4} and m["inputs"] == {"images": "f" * 64} and m["extra"] == {"note": "x"}
    assert m["digest"] == ref.digest and m["files"][0]["path"] == "lora.safetensors"
    assert m["files"][0]["size"] == 3 and len(m["files"][0]["sha256"]) == 64
    assert "torch" in m["packages"] and "python" in m["packages"] and m["created"]
    assert set(m["timings"]) >= {"write_s", "hash_s"}
    [entry] = store.ls()
    assert entry["id"] == ref.id and entry["digest"] == ref.digest and entry["size"] == 3
    assert store.ls("prior") == [] and store.verify() == []


def test_digest_is_content_hash(store: ArtifactStore) -> None:
    a = put(store, "lora", b"same", config={"k": 1})
    b = put(store, "lora", b"same", config={"k": 2})
    c = put(store, "lora", b"other", config={"k": 3})
    assert a.key != b.key and a.digest == b.digest != c.digest


def test_exception_inside_writer_publishes_nothing(store: ArtifactStore) -> None:
    key = artifact_key("lora", "1", {}, {})
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("lora", key) as d:
            (d / "partial.bin").write_bytes(b"x" * 1000)
            raise RuntimeError("boom")
    assert not store.has("lora", key) and store.get("lora", key) is None
    assert not d.exists()  # staging removed
    assert store.verify() == [] and store.ls() == []
    assert [f for f in _files_under(store) if not f.startswith(".staging/")] == []
    if store.is_local:
        assert _files_under(store) == []  # no staging entry or lock left either


def test_concurrent_writer_winner_is_kept(store: ArtifactStore) -> None:
    key = artifact_key("lora", "1", {}, {})
    with store.writer("lora", key) as outer:
        (outer / "w.bin").write_bytes(b"outer")
        with store.writer("lora", key) as inner:
            (inner / "w.bin").write_bytes(b"inner")
        first = store.get("lora", key)
    assert first is not None and store.get("lora", key) == first  # the later commit was discarded
    assert (store.path(first) / "w.bin").read_bytes() == b"inner"
    assert store.verify() == []


def test_writer_checks_key_against_version(store: ArtifactStore) -> None:
    key = artifact_key("lora", "1", {"a": 1}, {})
    with pytest.raises(StoreError, match="not artifact_key"):
        with store.writer("lora", key, config={"a": 2}, version="1"):
            pass
    assert not store.has("lora", key)


@pytest.mark.parametrize("bad", ["manifest", "symlink", "name"])
def test_writer_rejects_bad_contents(store: ArtifactStore, tmp_path: Path, bad: str) -> None:
    key = artifact_key("lora", "1", {}, {})
    (tmp_path / "outside.txt").write_text("secret")
    with pytest.raises(StoreError):
        with store.writer("lora", key) as d:
            if bad == "manifest":
                (d / "manifest.json").write_text("{}")
            elif bad == "symlink":
                os.symlink(tmp_path / "outside.txt", d / "link.txt")
            else:
                (d / "../../etc/passwd person.png".replace("/", "_")).write_text("x")
    assert not store.has("lora", key) and store.verify() == []


def test_inputs_must_be_strings(store: ArtifactStore) -> None:
    key = artifact_key("lora", "1", {}, {})
    with pytest.raises(StoreError, match="inputs"):
        with store.writer("lora", key, inputs={"x": 3}):  # type: ignore[dict-item]
            pass


def test_delete(store: ArtifactStore) -> None:
    ref = put(store)
    assert store.delete(ref.stage, ref.key) and not store.has(ref.stage, ref.key)
    assert not store.delete(ref.stage, ref.key)
    assert store.verify() == [] and _files_under(store) == []


def test_empty_artifact(store: ArtifactStore) -> None:
    key = artifact_key("prompts", "1", {}, {})
    with store.writer("prompts", key):
        pass
    ref = store.get("prompts", key)
    assert ref is not None and store.manifest(ref)["files"] == [] and store.verify() == []


# -- tampering --------------------------------------------------------------------------------------------


def _tamper(store: ArtifactStore, ref: ArtifactRef, how: str, rel: str = "data.bin") -> str:
    """Damage one file of ``ref`` in the store itself; return a substring its problem path must contain."""
    if store.is_local:
        p = store.path(ref, verify=False) / rel
        data = p.read_bytes()
        if how == "flip":
            p.write_bytes(bytes([data[0] ^ 1]) + data[1:])
        elif how == "truncate":
            p.write_bytes(data[:-1])
        elif how == "delete":
            p.unlink()
        elif how == "extra":
            (p.parent / "planted.bin").write_bytes(b"x")
            return "planted.bin"
        return rel
    fs = store._fs
    m = store.manifest(ref)
    rpath = store._rjoin(ref.stage, ref.key, m["upload"], rel)
    data = fs.cat_file(rpath)
    if how == "flip":
        fs.pipe_file(rpath, bytes([data[0] ^ 1]) + data[1:])
    elif how == "truncate":
        fs.pipe_file(rpath, data[:-1])
    elif how == "delete":
        fs.rm_file(rpath)
    elif how == "extra":
        fs.pipe_file(store._rjoin(ref.stage, ref.key, m["upload"], "planted.bin"), b"x")
        return "planted.bin"
    return rel


@pytest.mark.parametrize("how, kind", [("flip", "modified_file"), ("truncate", "size_mismatch"),
                                       ("delete", "missing_file"), ("extra", "extra_file")])
def test_tampering_detected(store: ArtifactStore, how: str, kind: str) -> None:
    ref = put(store, payload=b"0123456789")
    name = _tamper(store, ref, how)
    with pytest.raises(ArtifactCorrupt, match=name) as info:
        store.get(ref.stage, ref.key, verify=True)
    assert "\n" not in str(info.value) and ref.id in str(info.value)
    problems = store.verify()
    assert [(p.kind, p.path.endswith(name)) for p in problems] == [(kind, True)]
    assert store.get(ref.stage, ref.key, verify=False) == ref  # the cheap check does not hash


def test_tampered_nested_file_detected(store: ArtifactStore) -> None:
    ref = put(store)
    _tamper(store, ref, "flip", "sub/info.txt")
    with pytest.raises(ArtifactCorrupt, match="sub/info.txt"):
        store.get(ref.stage, ref.key)


def test_edited_manifest_detected(local_store: ArtifactStore) -> None:
    ref = put(local_store, payload=b"abc")
    mpath = local_store.path(ref) / "manifest.json"
    m = json.loads(mpath.read_text())
    (local_store.path(ref, verify=False) / "data.bin").write_bytes(b"abd")
    m["files"][0]["sha256"] = store_mod._hash_file(local_store.path(ref, verify=False) / "data.bin")[0]
    mpath.write_text(json.dumps(m))  # consistent file hash, but the manifest's seal is broken
    with pytest.raises(ArtifactCorrupt, match="seal"):
        local_store.get(ref.stage, ref.key)
    mpath.write_bytes(store_mod._seal(m))  # re-sealed too: the stale digest still gives it away
    with pytest.raises(ArtifactCorrupt, match="digest_mismatch"):
        local_store.get(ref.stage, ref.key)
    m["config"] = {"payload": "edited"}
    mpath.write_text(json.dumps({**m, "seal": json.loads(mpath.read_text())["seal"]}))
    with pytest.raises(ArtifactCorrupt, match="seal"):  # recorded config edited
        local_store.get(ref.stage, ref.key)
    mpath.write_text("{not json")
    with pytest.raises(ArtifactCorrupt, match="bad_manifest"):
        local_store.get(ref.stage, ref.key)
    assert [p.kind for p in local_store.verify()] == ["bad_manifest"]
    assert local_store.ls() == []


def test_manifest_deleted_makes_artifact_invisible_and_rewritable(local_store: ArtifactStore) -> None:
    ref = put(local_store, payload=b"abc")
    (local_store.path(ref) / "manifest.json").unlink()
    assert not local_store.has(ref.stage, ref.key) and local_store.get(ref.stage, ref.key) is None
    assert [p.kind for p in local_store.verify()] == ["incomplete"]
    again = put(local_store, payload=b"abc")  # the broken directory is replaced on commit
    assert again == ref and local_store.verify() == []


def test_hash_cache_still_sees_rewrites(local_store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = put(local_store, payload=b"0123456789")
    data = local_store.path(ref, verify=False) / "data.bin"
    calls: list[str] = []
    real = store_mod._hash_file

    def counting(p: Path, **kw: bool) -> tuple[str, int]:
        calls.append(str(p))
        return real(p, **kw)

    monkeypatch.setattr(store_mod, "_hash_file", counting)
    monkeypatch.setattr(store_mod, "_RACY_NS", 0)  # treat every file as old enough to cache
    local_store.get(ref.stage, ref.key)
    n = len(calls)
    local_store.get(ref.stage, ref.key)
    assert len(calls) == n  # cached: no re-hash
    data.write_bytes(b"0123456780")  # same size, new mtime/ctime
    with pytest.raises(ArtifactCorrupt, match="data.bin"):
        local_store.get(ref.stage, ref.key)
    assert [p.kind for p in local_store.verify()] == ["modified_file"]


def test_fresh_files_are_never_served_from_cache(local_store: ArtifactStore) -> None:
    ref = put(local_store, payload=b"0123456789")
    data = local_store.path(ref) / "data.bin"
    st = os.stat(data)
    data.write_bytes(b"0123456780")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only ctime moves
    with pytest.raises(ArtifactCorrupt, match="data.bin"):
        local_store.get(ref.stage, ref.key)


def test_stale_ref_digest(store: ArtifactStore) -> None:
    ref = put(store)
    stale = ArtifactRef(ref.stage, ref.key, "0" * 64)
    with pytest.raises(ArtifactCorrupt, match="digest"):
        store.path(stale)
    with pytest.raises(StoreError, match="not in"):
        store.manifest(ArtifactRef("lora", "1" * 64, "0" * 64))


# -- remote specifics --------------------------------------------------------------------------------------


def test_memory_store_end_to_end(mem_store: ArtifactStore, tmp_path: Path) -> None:
    ref = put(mem_store, payload=b"remote")
    local = mem_store.path(ref)
    assert local.is_relative_to(tmp_path / "cache") and local.name == ref.digest
    assert (local / "data.bin").read_bytes() == b"remote" and (local / "sub" / "info.txt").exists()
    second = ArtifactStore(mem_store.root_url, cache_dir=str(tmp_path / "cache2"))
    assert second.get(ref.stage, ref.key) == ref and second.has(ref.stage, ref.key)
    assert (second.path(ref) / "data.bin").read_bytes() == b"remote"
    second.record_run("run-1", [ref], {"concepts": ["cat"]})
    assert [r["run_id"] for r in mem_store.list_runs()] == ["run-1"]
    assert mem_store.gc() == [] and mem_store.verify() == []


def test_memory_damaged_cache_copy_is_refetched(mem_store: ArtifactStore) -> None:
    ref = put(mem_store, payload=b"remote")
    local = mem_store.path(ref)
    (local / "data.bin").write_bytes(b"REMOTE")
    assert (mem_store.path(ref) / "data.bin").read_bytes() == b"remote"


def test_memory_orphan_upload_reported_and_collected(mem_store: ArtifactStore) -> None:
    ref = put(mem_store)
    key = artifact_key("lora", "1", {"other": 1}, {})
    orphan = mem_store._rjoin("lora", key, "u1000000000-0123456789ab", "w.bin")  # a crashed writer's upload
    mem_store._fs.pipe_file(orphan, b"x")
    assert not mem_store.has("lora", key)
    assert [p.kind for p in mem_store.verify()] == ["orphan_upload"]
    mem_store.record_run("r", [ref], {})
    assert mem_store.gc() == [f"{mem_store.root_url}/lora/{key}/u1000000000-0123456789ab"]
    assert mem_store.verify() == [] and mem_store.has(ref.stage, ref.key)


@pytest.mark.parametrize("url", ["nosuchproto://bucket/x", "memory"])
def test_unusable_url_is_one_line_store_error(url: str, tmp_path: Path) -> None:
    if url == "memory":
        (tmp_path / "file").write_text("x")
        url = str(tmp_path / "file")  # a local root that is a file
    with pytest.raises(StoreError, match="cannot open artifact store") as info:
        ArtifactStore(url)
    assert "\n" not in str(info.value) and url.split("://")[-1] in str(info.value)


def test_credentials_never_in_messages() -> None:
    with pytest.raises(StoreError) as info:
        ArtifactStore("nosuchproto://user:hunter2@host/bucket")
    assert "hunter2" not in str(info.value)


# -- runs and gc ----------------------------------------------------------------------------------------


def test_runs_round_trip(store: ArtifactStore) -> None:
    a, b = put(store, payload=b"a"), put(store, payload=b"b")
    store.record_run("2024-01-01T00.run_1", [a, b], {"concepts": ["cat", "dog"], "seed": 0})
    run = store.read_run("2024-01-01T00.run_1")
    assert [x["id"] for x in run["artifacts"]] == [a.id, b.id] and run["meta"]["seed"] == 0
    created = run["created"]
    store.record_run("2024-01-01T00.run_1", [a], {"seed": 1})
    again = store.read_run("2024-01-01T00.run_1")
    assert again["created"] == created and len(again["artifacts"]) == 1
    with pytest.raises(StoreError, match="no run"):
        store.read_run("missing")
    with pytest.raises(StoreError, match="ArtifactRef"):
        store.record_run("r", ["lora/abc"], {})  # type: ignore[list-item]


def test_gc_follows_inputs_recursively(store: ArtifactStore) -> None:
    prior = put(store, "prior", b"P")
    shard = put(store, "prior_shard", b"S")
    stats = put(store, "stats", b"A", inputs={"prior": prior.id, "shard": shard.digest})  # id and digest
    lora = put(store, "lora", b"L", inputs={"stats": stats.id, "model": "e" * 64})  # unknown digest: ignored
    stale_lora = put(store, "lora", b"old", inputs={"stats": stats.id})
    stray = put(store, "images", b"I")
    store.record_run("run-a", [lora], {})
    assert store.gc(dry_run=True) == sorted([stale_lora.id, stray.id])
    assert store.has(stray.stage, stray.key)
    assert store.gc() == sorted([stale_lora.id, stray.id])
    for ref in (prior, shard, stats, lora):
        assert store.get(ref.stage, ref.key) == ref
    for ref in (stale_lora, stray):
        assert not store.has(ref.stage, ref.key)
    assert store.verify() == [] and store.gc() == []


def test_gc_keep_runs_selects_roots(store: ArtifactStore) -> None:
    a, b = put(store, payload=b"a"), put(store, payload=b"b")
    store.record_run("ra", [a], {})
    store.record_run("rb", [b], {})
    assert store.gc(keep_runs=["rb"]) == [a.id]
    with pytest.raises(StoreError, match="no run"):
        store.gc(keep_runs=["nope"])
    assert store.gc(keep_runs=[]) == [b.id] and store.ls() == []


def test_gc_refuses_without_runs(store: ArtifactStore) -> None:
    ref = put(store)
    with pytest.raises(StoreError, match="keep_runs=\\[\\]"):
        store.gc()
    assert store.has(ref.stage, ref.key)


def test_gc_refuses_with_unreadable_run(local_store: ArtifactStore) -> None:
    ref = put(local_store)
    local_store.record_run("ok", [ref], {})
    (Path(local_store.root_url[7:]) / "runs" / "bad.json").write_text("{")
    assert [p.kind for p in local_store.verify()] == ["bad_run"]
    with pytest.raises(StoreError, match="unreadable"):
        local_store.gc()


def test_gc_removes_incomplete_dirs(local_store: ArtifactStore) -> None:
    ref = put(local_store)
    local_store.record_run("r", [ref], {})
    junk = Path(local_store.root_url[7:]) / "lora" / ("9" * 64)
    junk.mkdir()
    (junk / "half.bin").write_bytes(b"x")
    assert local_store.gc() == [f"lora/{'9' * 64}"] and not junk.exists()


def test_verify_stage_filter(store: ArtifactStore) -> None:
    a = put(store, "lora", b"a")
    put(store, "prior", b"p")
    _tamper(store, a, "flip")
    assert [p.kind for p in store.verify("lora")] == ["modified_file"]
    assert store.verify("prior") == []


def test_local_write_is_durable_and_quick(local_store: ArtifactStore) -> None:
    t0 = time.perf_counter()
    for i in range(20):
        put(local_store, payload=str(i).encode())
    assert time.perf_counter() - t0 < 10
