"""Pipeline fault injection (issue 9, item 5): real ``mace erase`` processes on the tiny random SD1 model.

- SIGKILL at every stage boundary: a watcher polls the store and kills the process group the moment the
  first artifact of the target stage is published (no code hooks). The default tests start from the
  store a run that reached the stage left behind (the clean store minus the stage and all that reads it);
  the ``slow`` ones from an empty store. After each kill the store verifies clean apart from the staging
  entries of the killed writers (``orphan_staging``, which ``gc`` removes), nothing published before is
  lost, and a rerun reuses every published artifact and ends bit-identical to a clean run.
- Two ``mace erase`` processes on one store at once (the store's promise: the first rename wins, the
  loser's copy is discarded, so both succeed).
- A LoRA training that raises: retried and healed with ``execution.retries=1``; one line naming the stage
  and concept with ``retries=0``.
- Secrets planted in the environment never reach the store, Prefect's home/database or the output.
- Hostile concept names through ``mace erase`` and ``mace add``: rejected in one bounded line, or stored
  as data (never a path, never a shell word).

Every subprocess gets its own process group, so a kill takes its children (an ephemeral Prefect server)
with it. Counts for docs/RELIABILITY.md come from these tests' parameters.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tasks.store import ArtifactStore

from ._proc import REPO

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

RUN = "fault-run"
CONCEPTS = ["cat:object:forest", "dog:object:forest"]
KILL_STAGES = ("prompts", "images", "stats", "masks", "cfr", "lora", "fusion")
N_ARTIFACTS = 15  # 2 x (prompts, images, masks, stats, cfr_concept, lora) + cfr + fusion + export
KEY_RE = re.compile(r"[0-9a-f]{64}")
runner = CliRunner()


# ----------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api():
    """The shared Prefect test server; its URL is handed to child processes so they start no server."""
    from prefect.settings import PREFECT_API_URL

    from tests.flows.harness import shared_harness

    with shared_harness():
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def fault_model(tmp_path_factory) -> str:
    from tests.tiny_sd.conftest import build_tiny_pipeline

    path = tmp_path_factory.mktemp("fault_model") / "sd1"
    build_tiny_pipeline("sd1", seed=1).save_pretrained(path, safe_serialization=True)
    return str(path)


def config_data(model: str, store: str | Path, **over) -> dict:
    """tests/cli's small_config with two concepts and attention masks (so every stage runs)."""
    from tests.cli.conftest import small_config

    data = small_config(model, str(store), name=RUN, concepts=list(CONCEPTS), masks={"backend": "attention"},
                        execution={"store": str(store), "retries": 0, "retry_delay_s": 0})
    data.update(over)
    return data


def write_config(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def child_env(home: Path, api_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != "MACE_STORE"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


class Mace:
    """``python -m mace_cli.main ARGS`` in its own session (process group); output to files."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str], tag: str) -> None:
        self.out, self.err = workdir / f"{tag}.stdout", workdir / f"{tag}.stderr"
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen([sys.executable, "-m", "mace_cli.main", *args], cwd=REPO, env=env,
                                         stdout=o, stderr=e, start_new_session=True)

    def kill(self) -> None:
        with _suppress_lookup():
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own group: the CLI and whatever it started
        self.proc.wait()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()  # reap anything left in the group (an ephemeral server that outlived the CLI)

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et, ev, tb) -> bool:
        return et is ProcessLookupError or et is PermissionError


def published(root: Path) -> set[tuple[str, str]]:
    """(stage, key) of every artifact directory visible in the store (published = renamed into place)."""
    out = set()
    if not root.is_dir():
        return out
    for stage in os.listdir(root):
        if stage in (".staging", "runs") or not (root / stage).is_dir():
            continue
        out |= {(stage, k) for k in os.listdir(root / stage) if KEY_RE.fullmatch(k)}
    return out


def kill_when_published(mace: Mace, root: Path, stages: tuple[str, ...], before: set[tuple[str, str]],
                        timeout: float = 900) -> tuple[str, str]:
    """SIGKILL ``mace`` as soon as a new artifact of any of ``stages`` appears; return it."""
    deadline = time.monotonic() + timeout
    while True:
        for stage in stages:
            try:
                names = os.listdir(root / stage)
            except FileNotFoundError:
                continue
            new = sorted(k for k in names if KEY_RE.fullmatch(k) and (stage, k) not in before)
            if new:
                mace.kill()
                return stage, new[0]
        if mace.proc.poll() is not None:
            raise AssertionError(f"exited {mace.proc.returncode} before {stages} published:\n{mace.output()[-3000:]}")
        if time.monotonic() > deadline:
            mace.kill()
            raise AssertionError(f"no {stages} artifact within {timeout} s:\n{mace.output()[-3000:]}")
        time.sleep(0.01)


def assert_consistent_after_kill(root: Path, before: set[tuple[str, str]]) -> tuple[set[tuple[str, str]], int]:
    """Only orphaned staging entries are reported, every visible artifact is complete, none was lost."""
    store = ArtifactStore(root)
    problems = store.verify()
    assert all(p.kind == "orphan_staging" and "/.staging/" in p.path for p in problems), problems
    now = published(root)
    assert before <= now, f"artifacts lost: {before - now}"
    assert {(a["stage"], a["key"]) for a in store.ls()} == now  # every visible directory is a whole artifact
    for stage, key in now:
        assert store.get(stage, key) is not None  # re-hashed against its manifest
    return now, len(problems)


def run_weights(root: Path | str, run: str = RUN) -> dict:
    """The fused weights the recorded run points at (bytes as stored)."""
    from tasks.fusion import load_weights
    from tasks.store import ArtifactRef

    store = ArtifactStore(root)
    (fusion,) = [a for a in store.read_run(run)["artifacts"] if a["stage"] == "fusion"]
    return load_weights(store, ArtifactRef(fusion["stage"], fusion["key"], fusion["digest"]))


def same_weights(a: dict, b: dict) -> bool:
    from tests.flows.conftest import same_weights as same

    return same(a, b)


def rerun_in_process(cfg_path: str):
    """The resume: the erase flow on the same config, in this process (shared Prefect server)."""
    from flows.erase import erase
    from mace_cli.config_io import load_config

    return erase(load_config(cfg_path))


def finish_and_check(root: Path, cfg_path: str, visible: set[tuple[str, str]], clean: dict) -> None:
    """Rerun: every visible artifact is a hit; then gc removes only staging leftovers; weights == clean."""
    report = rerun_in_process(cfg_path)
    assert (report.hits, report.misses) == (len(visible), N_ARTIFACTS - len(visible)), report.stages
    store = ArtifactStore(root)
    removed = store.gc()  # keeps the recorded run: the kill left nothing but staging entries behind
    assert all("/.staging/" in p for p in removed), removed
    assert store.verify() == [] and published(root) >= visible and len(published(root)) == N_ARTIFACTS
    assert same_weights(run_weights(root), clean["weights"])


def one_error_line(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert len(lines[0]) < 600, f"error line of {len(lines[0])} characters"  # bounded, even for huge input
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# The clean run (once per module) doubles as the secrets run: planted keys in its environment
# ----------------------------------------------------------------------------------------------------

PLANT = uuid.uuid4().hex
SECRETS = {
    "OPENAI_API_KEY": f"sk-planted-{PLANT}",
    "MACE_LLM_API_KEY": f"mace-llm-planted-{PLANT[::-1]}",
    "AWS_ACCESS_KEY_ID": f"AKIAPLANTED{PLANT[:12].upper()}",
    "AWS_SECRET_ACCESS_KEY": f"aws-secret-planted/{PLANT}+x",
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, fault_model) -> dict:
    """An uninterrupted ``mace erase`` in a fresh store, run as a user would: its own process, its own
    Prefect home and ephemeral server (so its database is ours to grep), secrets in the environment."""
    work = tmp_path_factory.mktemp("clean")
    root, home = work / "store", work / "prefect-home"
    cfg = write_config(work / "config.yaml", config_data(fault_model, root))
    t0 = time.perf_counter()
    mace = Mace(["erase", cfg], work, child_env(home, None, **SECRETS), "erase")
    rc = mace.wait(timeout=1200)
    assert rc == 0, mace.output()[-4000:]
    store = ArtifactStore(root)
    assert store.verify() == [] and len(published(root)) == N_ARTIFACTS
    return {"root": root, "home": home, "work": work, "cfg": cfg, "weights": run_weights(root),
            "seconds": time.perf_counter() - t0, "output": mace.output()}


def seeded_store(clean: dict, dest: Path, drop: tuple[str, ...]) -> Path:
    """A copy of the clean store without ``drop`` stages and without its run record."""
    shutil.copytree(clean["root"], dest)
    store = ArtifactStore(dest)
    for a in store.ls():
        if a["stage"] in drop:
            store.delete(a["stage"], a["key"])
    shutil.rmtree(dest / "runs")
    return dest


# ----------------------------------------------------------------------------------------------------
# 1. SIGKILL at each stage boundary
# ----------------------------------------------------------------------------------------------------


# What a change at stage X invalidates: X and everything that reads it (flows/erase.py's wiring).
DEPENDENTS = {
    "prompts": ("prompts", "stats", "cfr_concept", "cfr", "lora", "fusion", "export"),
    "images": ("images", "masks", "lora", "fusion", "export"),
    "stats": ("stats", "cfr_concept", "cfr", "lora", "fusion", "export"),
    "masks": ("masks", "lora", "fusion", "export"),
    "cfr": ("cfr", "fusion", "export"),
    "lora": ("lora", "fusion", "export"),
    "fusion": ("fusion", "export"),
}


def kill_resume_check(root: Path, cfg: str, env: dict[str, str], workdir: Path, stage: str, clean: dict) -> None:
    """Run ``mace erase``, SIGKILL it at stage's first new artifact, check the store, resume, compare."""
    from mace_cli.main import app

    before = published(root)
    mace = Mace(["erase", cfg], workdir, env, f"kill-{stage}")
    hit, _ = kill_when_published(mace, root, (stage,), before)
    assert hit == stage and mace.proc.returncode == -signal.SIGKILL
    visible, orphans = assert_consistent_after_kill(root, before)
    # what an operator sees: verify lists only the killed writers' staging entries and says gc removes them
    r = runner.invoke(app, ["artifacts", "verify", "--store", str(root)])
    if orphans:
        assert r.exit_code == 1 and r.stderr.count("orphan_staging") == orphans, r.output
        assert "gc removes it" in r.stderr and "/.staging/" in r.stderr, r.output
    else:
        assert r.exit_code == 0, r.output
    finish_and_check(root, cfg, visible, clean)
    assert runner.invoke(app, ["artifacts", "verify", "--store", str(root)]).exit_code == 0
    print(f"\nKILL stage={stage} visible_before={len(before)} visible_after_kill={len(visible)} "
          f"orphans={orphans} rerun_misses={N_ARTIFACTS - len(visible)} lost=0 bit_identical=1")


@pytest.mark.parametrize("stage", KILL_STAGES)
def test_kill_at_stage_boundary_then_resume(tmp_path, prefect_api, fault_model, clean, stage):
    """The store as a run that reached stage X left it (the clean store minus X and all that reads X): a
    ``mace erase`` is killed when X publishes its first artifact (the other concept's X is in flight)."""
    root = seeded_store(clean, tmp_path / "store", drop=DEPENDENTS[stage])
    cfg = write_config(tmp_path / "config.yaml", config_data(fault_model, root))
    kill_resume_check(root, cfg, child_env(tmp_path / "home", prefect_api), tmp_path, stage, clean)


@pytest.mark.slow
@pytest.mark.parametrize("stage", KILL_STAGES)
def test_kill_at_stage_boundary_from_empty_store(tmp_path, prefect_api, fault_model, clean, stage):
    """The same from an empty store: everything upstream of X is computed by the process that is killed."""
    root = tmp_path / "store"
    cfg = write_config(tmp_path / "config.yaml", config_data(fault_model, root))
    kill_resume_check(root, cfg, child_env(tmp_path / "home", prefect_api), tmp_path, stage, clean)


# ----------------------------------------------------------------------------------------------------
# 2. Two erase processes on one store at once
# ----------------------------------------------------------------------------------------------------


def test_two_erase_processes_on_one_store(tmp_path, prefect_api, fault_model, clean):
    root = tmp_path / "store"
    cfg = write_config(tmp_path / "config.yaml", config_data(fault_model, root))
    env = child_env(tmp_path / "home", prefect_api)
    procs = [Mace(["erase", cfg], tmp_path, env, f"erase-{i}") for i in range(2)]
    rcs = [p.wait(timeout=1200) for p in procs]
    assert rcs == [0, 0], [p.output()[-3000:] for p in procs]
    for p in procs:
        assert "error" not in p.err.read_text(errors="replace").lower()
    store = ArtifactStore(root)
    assert store.verify() == [] and len(published(root)) == N_ARTIFACTS
    assert not (root / ".staging").exists() or not os.listdir(root / ".staging")  # losers cleaned up
    assert same_weights(run_weights(root), clean["weights"])


# ----------------------------------------------------------------------------------------------------
# 3. A LoRA training that raises
# ----------------------------------------------------------------------------------------------------


def _flaky_lora(monkeypatch, failures: int) -> dict:
    """Make mace_core.lora.train_concept_lora raise a transient error on its first ``failures`` calls."""
    from mace_core import lora

    real = lora.train_concept_lora
    lock = threading.Lock()
    calls = {"n": 0, "failed": 0}

    def flaky(*a, **k):
        with lock:
            calls["n"] += 1
            fail = calls["failed"] < failures
            calls["failed"] += fail
        if fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return real(*a, **k)

    monkeypatch.setattr(lora, "train_concept_lora", flaky)
    return calls


def test_lora_raising_once_is_retried(tmp_path, prefect_api, fault_model, clean, monkeypatch):
    from mace_cli.main import app

    root = seeded_store(clean, tmp_path / "store", drop=("lora", "fusion", "export"))
    data = config_data(fault_model, root)
    data["execution"] |= {"retries": 1}
    cfg = write_config(tmp_path / "config.yaml", data)
    calls = _flaky_lora(monkeypatch, failures=1)
    r = runner.invoke(app, ["erase", cfg])
    assert r.exit_code == 0, r.output
    assert calls == {"n": 3, "failed": 1}  # one failed attempt, its retry, the other concept
    assert ArtifactStore(root).verify() == []
    assert same_weights(run_weights(root), clean["weights"])


def test_lora_raising_without_retries_fails_in_one_line(tmp_path, prefect_api, fault_model, clean, monkeypatch):
    from mace_cli.main import app

    root = seeded_store(clean, tmp_path / "store", drop=("lora", "fusion", "export"))
    cfg = write_config(tmp_path / "config.yaml", config_data(fault_model, root))
    calls = _flaky_lora(monkeypatch, failures=1)
    line = one_error_line(runner.invoke(app, ["erase", cfg]))
    assert re.search(r"stage lora of concept '(cat|dog)' failed: .*illegal memory access", line), line
    assert calls["failed"] == 1
    store = ArtifactStore(root)
    assert store.verify() == [] and len(store.ls("lora")) <= 1 and store.ls("fusion") == []
    monkeypatch.undo()
    r = runner.invoke(app, ["erase", cfg])  # the store stayed consistent: the rerun heals it
    assert r.exit_code == 0, r.output
    assert ArtifactStore(root).verify() == [] and same_weights(run_weights(root), clean["weights"])


# ----------------------------------------------------------------------------------------------------
# 4. Secrets never leave the environment
# ----------------------------------------------------------------------------------------------------


def test_planted_secrets_appear_nowhere(clean):
    files = [p for base in (clean["root"], clean["home"], clean["work"]) for p in Path(base).rglob("*")
             if p.is_file()]
    names = {p.name for p in files}
    assert "erase.stdout" in names and "erase.stderr" in names
    assert any(n.startswith("prefect.db") for n in names), sorted(names)  # the run's own database
    db = b"".join(p.read_bytes() for p in files if p.name.startswith("prefect.db"))
    assert b"erase-" + RUN.encode() in db  # positive control: this run's flow run is in what we grep
    needles = [v.encode() for v in SECRETS.values()] + [PLANT.encode(), PLANT[::-1].encode(),
                                                        PLANT[:12].upper().encode()]
    leaks = [(str(p), n) for p in files for n in needles if n in p.read_bytes()]
    assert leaks == [], leaks
    assert len(files) > 50  # store, Prefect home and output were all searched


# ----------------------------------------------------------------------------------------------------
# 5. Hostile concept names through the CLI
# ----------------------------------------------------------------------------------------------------

REJECTED = {
    "nul": "a\x00b",
    "rlm": "\u200fcat",
    "rlo": "cat\u202e",
    "10k": "x" * 10_000,
}


def _tree(base: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    out = {}
    for p in base.rglob("*"):
        if not any(p == s or s in p.parents for s in skip):
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _escape_targets(root: Path, hostile: str) -> list[Path]:
    """Where a name used as a path would land, relative to the store, its stage dirs and the cwd."""
    bases = [root, root / "prompts", root / "images", root / ".staging", REPO, Path.cwd()]
    return [Path(os.path.normpath(b / hostile)) for b in bases]


def test_hostile_names_rejected_in_one_line(tmp_path, fault_model, clean):
    from mace_cli.main import app

    root = tmp_path / "store"
    shutil.copytree(clean["root"], root)
    before = _tree(tmp_path)
    for label, name in REJECTED.items():
        data = config_data(fault_model, root)  # rejected while the config is parsed: no model work
        data["concepts"] = [{"name": name, "type": "object", "mapping": "forest"}]
        cfg = write_config(tmp_path / f"{label}.yaml", data)
        line = one_error_line(runner.invoke(app, ["erase", cfg]))
        assert "concept name" in line and "\x00" not in line and "\u202e" not in line and "\u200f" not in line
        line = one_error_line(runner.invoke(app, ["add", RUN, name, "--store", str(root)]))
        assert "concept" in line and "\x00" not in line and "\u202e" not in line and "\u200f" not in line
        before[cfg] = _tree(tmp_path)[cfg]
    assert _tree(tmp_path) == before  # nothing written, in the store or beside it


def test_hostile_names_are_stored_as_data(tmp_path, prefect_api, fault_model, clean):
    """Names that are valid phrases run end to end; they stay data: in manifests, never in paths."""
    from mace_cli.main import app

    pwned, pwned2 = Path("/tmp/pwned"), REPO / "pwned2"  # the CLI runs with the repo as cwd
    assert not pwned.exists() and not pwned2.exists(), "remove /tmp/pwned and pwned2 before the test"
    passwd = Path("/etc/passwd").stat()
    root = tmp_path / "store"
    shutil.copytree(clean["root"], root)
    outside = _tree(tmp_path, skip=(root,))
    erase_names = ["../../etc/passwd", "$(touch /tmp/pwned)"]
    add_names = ["line\nbreak", "`touch /tmp/pwned`; touch pwned2"]  # short: prompts must fit 77 tokens
    data = config_data(fault_model, root)
    data["concepts"] = [*CONCEPTS, *({"name": n, "type": "object", "mapping": "forest"} for n in erase_names)]
    cfg = write_config(tmp_path / "hostile.yaml", data)
    outside[cfg] = None
    r = runner.invoke(app, ["erase", cfg])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["add", RUN, *add_names, "--store", str(root)])
    assert r.exit_code == 0, r.output

    store = ArtifactStore(root)
    assert store.verify() == []
    recorded = store.read_run(RUN)["meta"]["concepts"]
    assert set(recorded) == {"cat", "dog", *erase_names, "line break", add_names[1]}  # newline normalised
    for p in root.rglob("*"):  # every path in the store is built from stage names, keys and fixed names
        rel = p.relative_to(root).as_posix()
        assert all(frag not in rel for frag in ("passwd", "touch", "pwned", "break", "$", "`", "..")), rel
    now = _tree(tmp_path, skip=(root,))
    assert {k for k in now if k not in outside} == set() and all(
        now[k] == v for k, v in outside.items() if v is not None)
    assert not pwned.exists() and not pwned2.exists()
    for target in _escape_targets(root, "../../etc/passwd"):
        assert target == Path("/etc/passwd") or not target.exists(), target
    assert Path("/etc/passwd").stat().st_mtime_ns == passwd.st_mtime_ns
