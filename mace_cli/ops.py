"""Operations commands: work pools, GPU slots, the zombie-run automation, deployments, workers, a watcher.

Mounted by the main CLI as ``mace ops ...`` (``ops_app``) plus ``mace deploy`` (:func:`deploy`); also runnable
as ``python -m mace_cli.ops ...`` (what ``deployments/setup.sh`` does). Every set-up step is idempotent: it
creates what is missing and updates what differs, so running it twice changes nothing.

The Prefect API is whatever the environment points at (``PREFECT_API_URL`` and, for an authenticated server,
``PREFECT_API_AUTH_STRING``); nothing here reads or prints a secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = REPO / "deployments"
ZOMBIE_AUTOMATION = "mace: crash flow runs without heartbeats"

# pool name -> (worker type, base job template file); docker/k8s pools are created only on request
POOLS: dict[str, tuple[str, str]] = {
    "cpu": ("process", "process.json"),
    "gpu": ("process", "process.json"),
    "gpu-docker": ("docker", "gpu-docker.json"),
    "gpu-k8s": ("kubernetes", "gpu-k8s.json"),
}

ops_app = typer.Typer(help="Prefect operations: pools, GPU slots, deployments, workers.", no_args_is_help=True)


class OpsError(RuntimeError):
    """A set-up step failed; the message names the step and the fix."""


# ----------------------------------------------------------------------------------------------------
# Plain functions (the CLI and the tests call these)
# ----------------------------------------------------------------------------------------------------


def base_job_template(kind: str) -> dict[str, Any]:
    """The committed base job template of pool ``kind`` (``deployments/<file>``)."""
    return json.loads((DEPLOYMENTS / POOLS[kind][1]).read_text())


def ensure_pool(client: Any, name: str, worker_type: str, template: dict[str, Any]) -> str:
    """Create work pool ``name`` or bring its template up to date; returns 'created' | 'updated' | 'unchanged'."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type=worker_type, base_job_template=template))
        return "created"
    if pool.type != worker_type:
        raise OpsError(f"work pool {name!r} exists with type {pool.type!r}, expected {worker_type!r}: delete it "
                       f"(prefect work-pool delete {name}) or pick another name")
    if pool.base_job_template != template:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return "updated"
    return "unchanged"


def ensure_limit(client: Any, name: str, limit: int) -> str:
    """Global concurrency limit ``name`` with ``limit`` slots (GPU slots); created or updated."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        current = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        return "created"
    if current.limit != limit or not current.active:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
        return "updated"
    return "unchanged"


def zombie_automation(within_s: int = 90) -> Any:
    """Automation: a flow run with no heartbeat for ``within_s`` seconds (worker/host died) -> Crashed.

    Prefect 3.8's documented zombie detection: flow runs emit ``prefect.flow-run.heartbeat`` every
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (>= 30; our pools set 30); the parent task then sees a
    Crashed child and its retry re-submits the LoRA job (tasks/remote.py). ``within_s`` must exceed the
    heartbeat interval with margin.
    """
    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="Marks flow runs Crashed when their heartbeats stop (dead worker or host).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within_s} s: the worker or its host died; "
                                            "the parent's retry re-submits the job")],
    )


def ensure_automation(client: Any, within_s: int = 90) -> str:
    """The zombie automation, created once (replaced when its window changed)."""
    want = zombie_automation(within_s)
    existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if existing and all(a.trigger.within == want.trigger.within for a in existing):
        return "unchanged"
    for a in existing:
        client.delete_automation(a.id)
    client.create_automation(want)
    return "updated" if existing else "created"


def setup(gpu_slots: int = 1, pools: tuple[str, ...] = ("cpu", "gpu"), zombie_within_s: int = 90,
          limit_name: str = "gpu") -> dict[str, str]:
    """Pools, the GPU-slot limit and the zombie automation on the current Prefect API; what each step did."""
    from prefect.client.orchestration import get_client

    unknown = [p for p in pools if p not in POOLS]
    if unknown:
        raise OpsError(f"unknown pool(s) {unknown}: choose from {', '.join(POOLS)}")
    done: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for name in pools:
            kind, _ = POOLS[name]
            done[f"pool {name}"] = ensure_pool(client, name, kind, base_job_template(name))
        done[f"limit {limit_name}"] = ensure_limit(client, limit_name, gpu_slots)
        done["automation zombie"] = ensure_automation(client, zombie_within_s)
    return done


def code_env(repo: Path = REPO) -> dict[str, str]:
    """Environment for `prefect deploy` / workers: where process workers find the code, and this process's API."""
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    api = get_current_settings().api
    if api.url:
        env["PREFECT_API_URL"] = str(api.url)
    if api.auth_string is not None:
        env["PREFECT_API_AUTH_STRING"] = api.auth_string.get_secret_value()
    env["MACE_REPO_DIR"] = str(repo)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    return env


def prefect_exe() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def deploy_names(names: list[str] | None = None, repo: Path = REPO, timeout_s: float = 600) -> None:
    """``prefect --no-prompt deploy --all`` (or ``-n <entrypoint function>/<deployment>``) from the repo root.

    Prefect matches ``-n`` against the entrypoint's function name (``train_lora/gpu``), not the flow name.
    """
    sel = [a for n in names for a in ("-n", n)] if names else ["--all"]
    proc = subprocess.run([prefect_exe(), "--no-prompt", "deploy", *sel], cwd=repo, env=code_env(repo),
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = " ".join((proc.stdout + proc.stderr).split())[-600:]
        raise OpsError(f"prefect deploy failed (exit {proc.returncode}): {tail}; check PREFECT_API_URL / "
                       "PREFECT_API_AUTH_STRING and that `mace ops setup` created the pools")


def worker_command(pool: str, name: str, limit: int = 1) -> list[str]:
    """The worker command line (process workers; run one per GPU with CUDA_VISIBLE_DEVICES set)."""
    return [prefect_exe(), "worker", "start", "--pool", pool, "--name", name, "--limit", str(limit)]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def read_concepts(path: Path) -> list[dict[str, Any]]:
    """A concept-list file: YAML/JSON list of concept dicts, or text lines ``name[,type[,mapping]]``."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(text) or []
        data = data.get("concepts", data) if isinstance(data, dict) else data
        return [d if isinstance(d, dict) else {"name": str(d), "type": "object", "mapping": "a photo"}
                for d in data]
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts and parts[0] and not parts[0].startswith("#"):
            out.append({"name": parts[0], "type": parts[1] if len(parts) > 1 else "object",
                        "mapping": parts[2] if len(parts) > 2 else "a photo"})
    return out


def add_request(path: Path, run: str, store: str, recorded: list[str]) -> dict[str, Any] | None:
    """The ``mace-add`` request that makes run ``run`` match the concept file (None when nothing changed)."""
    want = read_concepts(path)
    names = {c["name"] for c in want}
    add = [c for c in want if c["name"] not in recorded]
    remove = [n for n in recorded if n not in names]
    if not add and not remove:
        return None
    return {"run": run, "add": add, "remove": remove, "store": store}


def watch_once(path: Path, run: str, store: str, last_digest: str, deployment: str = "mace-add/default") -> str:
    """If the file changed since ``last_digest``, start ``mace-add`` for the difference; returns the new digest."""
    digest = file_digest(path)
    if digest == last_digest or not digest:
        return last_digest
    from prefect.deployments import run_deployment

    from tasks._cache import open_store

    recorded = open_store(store).read_run(run)["meta"].get("concepts", [])
    req = add_request(path, run, store, recorded)
    if req is not None:
        fr = run_deployment(deployment, parameters={"req": req}, timeout=0,
                            idempotency_key=f"concepts:{run}:{digest}", tags=["mace", "watcher"])
        typer.echo(f"{path} changed: started {deployment} run {fr.name} (+{len(req['add'])} -{len(req['remove'])})")
    return digest


# ----------------------------------------------------------------------------------------------------
# A local authenticated server (tests, screenshots, a dev box): loopback only, its own PREFECT_HOME
# ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``prefect server start`` on 127.0.0.1 with an auth string; ``env`` is what clients/workers need.

    The auth string is passed through the environment only (never on a command line, never logged).
    """

    def __init__(self, home: Path, auth: str, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.home, self.port, self.host = Path(home), port or free_port(), host
        self.url = f"http://{host}:{self.port}/api"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env = {**base, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.url,
                    "PREFECT_API_AUTH_STRING": auth, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_LOGGING_LEVEL": "INFO"}
        self._auth = auth
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> LocalServer:
        import urllib.request

        self.home.mkdir(parents=True, exist_ok=True)
        # the UI calls the API at PREFECT_UI_API_URL, whose default is port 4200 whatever --port says
        env = {**self.env, "PREFECT_SERVER_API_AUTH_STRING": self._auth, "PREFECT_UI_API_URL": self.url}
        env.pop("PREFECT_API_URL")
        self.log = open(self.home / "server.log", "wb")
        self.proc = subprocess.Popen([prefect_exe(), "server", "start", "--host", self.host, "--port",
                                      str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OpsError(f"prefect server exited with {self.proc.returncode}: see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise OpsError(f"prefect server not healthy after {timeout_s:.0f} s: see {self.home / 'server.log'}")

    def settings(self) -> Any:
        """``temporary_settings`` pointing this process's Prefect client at the server."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.url, PREFECT_API_AUTH_STRING: self._auth})

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc)
        self.proc = None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), children first."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def kill_tree(pid: int, sig: int = 9) -> None:
    """Signal ``pid`` and all its descendants (a dead host: the worker *and* its flow-run processes)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM ``proc`` and its descendants, then SIGKILL what is left after ``grace_s`` (a Prefect worker
    can take longer than that to exit on SIGTERM on a loaded machine)."""
    if proc.poll() is not None:
        return
    kill_tree(proc.pid, sig=15)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(timeout=10)


def start_worker(server_env: dict[str, str], pool: str, name: str, log_dir: Path, limit: int = 1,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process worker subprocess for ``pool`` with the repo importable (its own session)."""
    env = {**server_env, **{k: v for k, v in code_env().items() if k in ("MACE_REPO_DIR", "PYTHONPATH")},
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", **(extra_env or {})}
    log = open(Path(log_dir) / f"worker-{name}.log", "wb")
    return subprocess.Popen(worker_command(pool, name, limit), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------


@ops_app.command("setup")
def setup_cmd(
    gpu_slots: Annotated[int, typer.Option(min=0, help="Slots of the 'gpu' global concurrency limit.")] = 1,
    docker: Annotated[bool, typer.Option(help="Also create the gpu-docker pool.")] = False,
    kubernetes: Annotated[bool, typer.Option(help="Also create the gpu-k8s pool.")] = False,
    zombie_after: Annotated[int, typer.Option(min=35, help="Seconds without heartbeat before Crashed.")] = 90,
) -> None:
    """Create/update work pools, GPU slots and the zombie-run automation (idempotent)."""
    pools = ("cpu", "gpu") + (("gpu-docker",) if docker else ()) + (("gpu-k8s",) if kubernetes else ())
    for what, status in setup(gpu_slots, pools, zombie_after).items():
        typer.echo(f"{what}: {status}")


def deploy(
    name: Annotated[list[str] | None,
                    typer.Option("--name", "-n",
                                 help="function/deployment, e.g. train_lora/gpu (default: all)")] = None,
    gpu_slots: Annotated[int, typer.Option(min=0, help="Slots of the 'gpu' limit.")] = 1,
    docker: Annotated[bool, typer.Option(help="Also set up the gpu-docker pool.")] = False,
    kubernetes: Annotated[bool, typer.Option(help="Also set up the gpu-k8s pool.")] = False,
) -> None:
    """Set up pools and limits, then `prefect deploy` the deployments of prefect.yaml from the repo root."""
    setup_cmd(gpu_slots, docker, kubernetes)
    if not name:
        # --all would also deploy to pools that were not created: deploy exactly those whose pool exists
        name = default_names(docker, kubernetes)
    deploy_names(name)
    typer.echo(f"deployed: {', '.join(name)}")


def default_names(docker: bool = False, kubernetes: bool = False) -> list[str]:
    names = ["erase/default", "add/default", "evaluate/nightly", "prior/default", "train_lora/gpu"]
    return names + (["train_lora/gpu-docker"] if docker else []) + (["train_lora/gpu-k8s"] if kubernetes else [])


ops_app.command("deploy")(deploy)


@ops_app.command("worker")
def worker_cmd(
    pool: Annotated[str, typer.Option(help="Work pool: cpu or gpu.")] = "gpu",
    name: Annotated[str, typer.Option(help="Worker name (shown on each flow run).")] = "gpu-0",
    limit: Annotated[int, typer.Option(min=1, help="Flow runs at once (= GPUs this worker drives).")] = 1,
) -> None:
    """Start a process worker with the repo importable and heartbeats on (blocks; Ctrl-C stops it)."""
    env = code_env()
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    raise typer.Exit(subprocess.call(worker_command(pool, name, limit), cwd=REPO, env=env))


@ops_app.command("params")
def params_cmd(
    config: Annotated[Path, typer.Argument(help="Erase config file (.yaml/.toml), as for `mace erase`.")],
    store: Annotated[str | None, typer.Option("--store", "-s", help="Override execution.store (use the shared "
                                              "store the workers see).")] = None,
) -> None:
    """Print a config as the JSON parameters of mace-erase/default (`prefect deployment run --params`)."""
    from mace_cli.config_io import load_config

    try:
        cfg = load_config(config, store=store)
    except Exception as exc:  # noqa: BLE001 - one line, like every mace command
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"cfg": cfg.model_dump(mode="json")}, separators=(",", ":")))


@ops_app.command("watch-concepts")
def watch_cmd(
    path: Annotated[Path, typer.Argument(help="Concept-list file (yaml/json list or 'name,type,mapping' lines).")],
    run: Annotated[str, typer.Option(help="Recorded run to keep in sync with the file.")],
    store: Annotated[str, typer.Option(help="Artifact store of the run.")] = "artifacts",
    every: Annotated[float, typer.Option(min=1.0, help="Poll interval, seconds.")] = 10.0,
    once: Annotated[bool, typer.Option(help="Check once and exit (cron-friendly).")] = False,
) -> None:
    """Start `mace-add/default` whenever the concept-list file changes (adds and removes the difference)."""
    last = "" if once else file_digest(path)
    while True:
        last = watch_once(path, run, store, last)
        if once:
            return
        time.sleep(every)


if __name__ == "__main__":  # python -m mace_cli.ops ...
    ops_app()
