"""Store fault injection: killed writers, full disks, racing writers and gc. After each fault the store
passes ``verify`` (or gc cleans what a dead process left), no partial artifact is visible, and a rerun
succeeds."""

from __future__ import annotations

import threading
from pathlib import Path

import fsspec
import pytest

from tasks.store import ArtifactCorrupt, ArtifactRef, ArtifactStore, artifact_key

from ._proc import popen_py, run_py

KEY = artifact_key("lora", "1", {"concept": "cat"}, {})

# A child that writes one three-file artifact of KEY (payload tagged with the writer's id) and may die.
WRITE = """
import os, sys
from pathlib import Path
import tasks.store as st
store = st.ArtifactStore({root!r})
tag = {tag!r}
{setup}
with store.writer("lora", {key!r}, config={{"concept": "cat"}}) as d:
    for i in range(3):
        (d / f"part{{i}}.bin").write_bytes((tag * 20000).encode())
    {inside}
print("done")
"""


def write_child(root: Path, *, tag: str = "A", setup: str = "", inside: str = "pass") -> str:
    return WRITE.format(root=str(root), tag=tag, key=KEY, setup=setup, inside=inside)


def assert_recovers(root: Path, *, tag: str = "B") -> None:
    """gc cleans any leftovers, verify is clean, and a rerun publishes a complete artifact."""
    store = ArtifactStore(root)
    store.gc(keep_runs=[])
    assert store.verify() == []
    assert not (root / ".staging").exists() or not any((root / ".staging").iterdir())
    run_py(write_child(root, tag=tag), check=True)
    ref = store.get("lora", KEY)
    assert ref is not None and store.verify() == []
    assert (store.path(ref) / "part0.bin").read_bytes() == (tag * 20000).encode()


KILL_POINTS = {
    # where the child dies -> what it patches so that it dies there
    "inside_writer": ("", "os._exit(9)"),
    "while_hashing": ("st._hash_file = lambda *a, **k: os._exit(9)", "pass"),
    "before_publish_rename": (
        "real = os.rename\n"
        "def fake(src, dst):\n"
        "    if Path(dst).parent.name == 'lora': os._exit(9)\n"
        "    return real(src, dst)\n"
        "os.rename = fake", "pass"),
    "while_writing_manifest": ("st._write_file_durable = lambda *a, **k: os._exit(9)", "pass"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_writer_leaves_nothing_visible(tmp_path: Path, point: str) -> None:
    root = tmp_path / "root"
    setup, inside = KILL_POINTS[point]
    proc = run_py(write_child(root, setup=setup, inside=inside))
    assert proc.returncode == 9, proc.stderr
    store = ArtifactStore(root)
    assert not store.has("lora", KEY) and store.get("lora", KEY) is None and store.ls() == []
    problems = store.verify()
    assert [p.kind for p in problems] == ["orphan_staging"] and ".staging" in problems[0].path
    assert store.gc(keep_runs=[], dry_run=True) == [problems[0].path]
    assert_recovers(root)


def test_killed_right_after_publish_keeps_complete_artifact(tmp_path: Path) -> None:
    root = tmp_path / "root"
    setup = ("real = os.rename\n"
             "def fake(src, dst):\n"
             "    real(src, dst)\n"
             "    if Path(dst).parent.name == 'lora': os._exit(9)\n"
             "os.rename = fake")
    assert run_py(write_child(root, setup=setup)).returncode == 9
    store = ArtifactStore(root)
    ref = store.get("lora", KEY)  # complete and verified
    assert ref is not None
    assert [p.kind for p in store.verify()] == ["orphan_staging"]  # only its lock file is left
    store.record_run("r", [ref], {})
    assert len(store.gc()) == 1 and store.verify() == [] and store.get("lora", KEY) == ref


def test_killed_during_delete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_py(write_child(root), check=True)
    code = f"""
import shutil, os, tasks.store as st
st.shutil.rmtree = lambda *a, **k: os._exit(9)
st.ArtifactStore({str(root)!r}).delete("lora", {KEY!r})
"""
    assert run_py(code).returncode == 9
    store = ArtifactStore(root)
    assert not store.has("lora", KEY)  # gone in one rename, even though its bytes were not freed yet
    assert [p.kind for p in store.verify()] == ["orphan_staging"]
    assert_recovers(root)


def test_killed_during_record_run_keeps_old_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_py(write_child(root), check=True)
    store = ArtifactStore(root)
    ref = store.get("lora", KEY)
    assert ref is not None
    store.record_run("r1", [ref], {"v": 1})
    code = f"""
import os, tasks.store as st
store = st.ArtifactStore({str(root)!r})
ref = store.get("lora", {KEY!r})
st.os.replace = lambda *a: os._exit(9)
store.record_run("r1", [ref, ref], {{"v": 2}})
"""
    assert run_py(code).returncode == 9
    assert store.read_run("r1")["meta"] == {"v": 1}
    assert [p.kind for p in store.verify()] == ["orphan_staging"]
    assert len(store.gc()) == 1 and store.verify() == [] and store.has("lora", KEY)


# -- full disk ------------------------------------------------------------------------------------------

FSIZE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


@pytest.mark.parametrize("limit, where", [(10_000, "data"), (50_000, "manifest")])
def test_disk_full_during_write_leaves_store_consistent(tmp_path: Path, limit: int, where: str) -> None:
    """RLIMIT_FSIZE makes every write past ``limit`` bytes fail with EFBIG, like a full disk.

    'data': a 20 kB part file hits the limit inside the writer. 'manifest': the parts fit (20 kB each
    under a 50 kB limit) but the padded manifest (``extra`` of 100 kB) does not.
    """
    root = tmp_path / "root"
    code = write_child(root, setup=FSIZE.format(limit=limit))
    if where == "manifest":
        code = code.replace('config={"concept": "cat"}', 'config={"concept": "cat"}, extra={"pad": "x" * 100000}')
    proc = run_py(code)
    assert proc.returncode == 1 and ("File too large" in proc.stderr or "EFBIG" in proc.stderr), proc.stderr
    assert ("write_file_durable" in proc.stderr) == (where == "manifest"), proc.stderr
    store = ArtifactStore(root)
    assert not store.has("lora", KEY) and store.verify() == []
    assert not any((root / ".staging").iterdir())  # the failing process cleaned up after itself
    assert_recovers(root)


def test_remote_commit_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a remote root a failed manifest upload (ENOSPC) publishes nothing and removes the upload."""
    store = ArtifactStore("memory://faults-remote-commit", cache_dir=str(tmp_path / "cache"))
    fs = store._fs
    real = fs.pipe_file

    def full(path: str, *args: object, **kwargs: object) -> None:
        if path.endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        real(path, *args, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", full)
    try:
        with pytest.raises(OSError, match="No space"):
            with store.writer("lora", KEY) as d:
                (d / "w.bin").write_bytes(b"x" * 1000)
        assert not store.has("lora", KEY) and store._remote_files() == {} and store.verify() == []
        monkeypatch.setattr(fs, "pipe_file", real)
        with store.writer("lora", KEY) as d:
            (d / "w.bin").write_bytes(b"x" * 1000)
        assert store.get("lora", KEY) is not None and store.verify() == []
    finally:
        fsspec.filesystem("memory").rm("/faults-remote-commit", recursive=True)


# -- races ------------------------------------------------------------------------------------------------

RACE = """
import os, sys, time
from pathlib import Path
import tasks.store as st
store = st.ArtifactStore({root!r})
tag, go = {tag!r}, Path({go!r})
Path(str(go) + "." + tag).touch()
while not go.exists():
    time.sleep(0.001)
for n in range({rounds}):
    key = st.artifact_key("lora", "1", {{"round": n}}, {{}})
    with store.writer("lora", key, config={{"round": n}}) as d:
        for i in range(4):
            (d / f"part{{i}}.bin").write_bytes((tag * (5000 + 100 * i)).encode())
"""


def _assert_whole(store: ArtifactStore, ref_stage: str, key: str) -> str:
    """The artifact is complete and from exactly one writer; return that writer's tag."""
    ref = store.get(ref_stage, key)
    assert ref is not None
    tags = {(store.path(ref) / f"part{i}.bin").read_bytes()[:1] for i in range(4)}
    assert len(tags) == 1, f"mixed artifact {tags}"
    assert len(store.manifest(ref)["files"]) == 4
    return tags.pop().decode()


def test_two_processes_write_same_keys(tmp_path: Path) -> None:
    root, go, rounds = tmp_path / "root", tmp_path / "go", 6
    procs = [popen_py(RACE.format(root=str(root), tag=t, go=str(go), rounds=rounds)) for t in "AB"]
    for t in "AB":  # start both at once
        while not Path(f"{go}.{t}").exists():
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            threading.Event().wait(0.005)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    store = ArtifactStore(root)
    winners = [_assert_whole(store, "lora", artifact_key("lora", "1", {"round": n}, {})) for n in range(rounds)]
    assert set(winners) <= {"A", "B"} and len(store.ls()) == rounds
    assert store.verify() == [] and not any((root / ".staging").iterdir())


def _race_writers(store: ArtifactStore, tags: str) -> list[BaseException]:
    """One thread per tag writes KEY (four files of the tag), all released at once; the errors they raised."""
    barrier = threading.Barrier(len(tags))
    errors: list[BaseException] = []

    def work(tag: str) -> None:
        try:
            barrier.wait()
            with store.writer("lora", KEY) as d:
                for i in range(4):
                    (d / f"part{i}.bin").write_bytes((tag * 3000).encode())
        except BaseException as exc:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_write_same_key(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "root")
    assert _race_writers(store, "ABCDEFGH") == []
    _assert_whole(store, "lora", KEY)
    assert store.verify() == [] and not any((tmp_path / "root" / ".staging").iterdir())


def test_threads_write_same_key_memory(tmp_path: Path) -> None:
    store = ArtifactStore("memory://faults-threads", cache_dir=str(tmp_path / "cache"), stale_after_s=0)
    try:
        assert _race_writers(store, "ABCDEF") == []
        _assert_whole(store, "lora", KEY)
        # a losing upload may remain only if it lost after the last check; gc removes it
        ref = store.get("lora", KEY)
        assert ref is not None
        store.record_run("r", [ref], {})
        store.gc()
        assert store.verify() == []
    finally:
        fsspec.filesystem("memory").rm("/faults-threads", recursive=True)


def test_gc_and_verify_never_touch_a_live_write(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "root")
    with store.writer("lora", KEY) as d:
        (d / "w.bin").write_bytes(b"in progress")
        assert store.verify() == []  # a live staging entry is not an orphan
        assert store.gc(keep_runs=[]) == []
        assert (d / "w.bin").exists()
    assert store.get("lora", KEY) is not None


def test_gc_racing_a_writer_process(tmp_path: Path) -> None:
    """A writer in another process holds its staging lock while gc runs: gc skips it."""
    root = tmp_path / "root"
    gate = tmp_path / "gate"
    child = popen_py(write_child(root, setup="import time", inside=(
        f"Path({str(gate)!r} + '.in').touch()\n"
        f"    while not Path({str(gate)!r}).exists(): time.sleep(0.001)")))
    while not Path(f"{gate}.in").exists():
        assert child.poll() is None, child.communicate()
        threading.Event().wait(0.005)
    store = ArtifactStore(root)
    assert store.gc(keep_runs=[]) == [] and store.verify() == []
    gate.touch()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert store.get("lora", KEY) is not None and store.verify() == []


# -- one corrupted byte in every file of every artifact kind -------------------------------------------------


def _write_every_kind(store: ArtifactStore) -> list[ArtifactRef]:
    """One artifact per format (safetensors, zarr, parquet, PNG, json); return their refs."""
    import numpy as np
    import torch

    from tasks import formats

    writers = {
        "lora": lambda d: formats.save_tensors(d / "lora.safetensors",
                                               {"down": torch.randn(4, 16), "up": torch.randn(16, 4)}),
        "stats": lambda d: formats.save_arrays_zarr(d / "stats.zarr",
                                                    {"A": np.random.rand(16, 16), "G": np.eye(16)},
                                                    attrs={"n": 3}, chunks=8),
        "prompts": lambda d: formats.save_table(d / "table.parquet", [{"erased": "a cat", "mapping": "a"}] * 5),
        "masks": lambda d: formats.save_png(d / "0000.png", np.random.rand(8, 8) > 0.5),
        "captions": lambda d: (d / "count.json").write_text('{"count": 12}'),
    }
    refs = []
    for stage, write in writers.items():
        key = artifact_key(stage, "1", {}, {})
        with store.writer(stage, key) as d:
            write(d)
        ref = store.get(stage, key)
        assert ref is not None
        refs.append(ref)
    return refs


def test_one_flipped_byte_in_any_file_is_caught(tmp_path: Path) -> None:
    """Every file of every kind, manifest included: flip its middle byte -> ArtifactCorrupt naming it."""
    store = ArtifactStore(tmp_path / "root")
    refs = _write_every_kind(store)
    n = 0
    for ref in refs:
        adir = store.path(ref)
        for f in sorted(p for p in adir.rglob("*") if p.is_file()):
            data = f.read_bytes()
            mid = len(data) // 2
            f.write_bytes(data[:mid] + bytes([data[mid] ^ 0x01]) + data[mid + 1:])
            with pytest.raises(ArtifactCorrupt, match=f.name):
                store.get(ref.stage, ref.key)
            problems = store.verify()
            assert len(problems) == 1 and problems[0].path.endswith(f.relative_to(adir).as_posix()), problems
            f.write_bytes(data)
            assert store.get(ref.stage, ref.key) == ref and store.verify() == []
            n += 1
    assert n >= 10  # the zarr group alone has several files
    print(f"\nFLIP files={n} kinds={len(refs)} caught={n}")
