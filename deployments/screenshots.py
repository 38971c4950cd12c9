"""Screenshots of the Prefect UI as an operator sees it, for docs/OPS.md (issue 8, item 5).

Starts an authenticated Prefect server on 127.0.0.1 (:class:`mace_cli.ops.LocalServer`, its own PREFECT_HOME
in a temporary directory), erases two concepts from a tiny random-weight SD1 pipeline against it, adds a
third with the ``mace-add`` flow (so the stage table mixes cache hits and misses), then drives headless
Chromium (Debian's package, through playwright) to the erase run of that add:

- ``ops-flow-run.png``: the flow-run page (timeline graph, logs);
- ``ops-task-runs.png``: its task runs, named ``<stage>-<concept>``;
- ``ops-artifacts-tab.png``: its Artifacts tab (stage table, model link, LoRA progress);
- ``ops-stage-table.png``: the stage-table artifact itself (concepts x stages, hit/miss).

Each page is checked after it rendered (the login page was passed, the run name, every concept name, the
artifact key and an HTML table are in the DOM); the checks are printed and returned, and the script exits 1
when one fails. ``tests/ops/test_screenshots.py`` runs it into a temporary directory.

    PYTHONPATH=. python deployments/screenshots.py --out docs/img

The UI keeps the server's auth string in ``localStorage["prefect-password"]`` (base64), which is what its
login form does; the string is generated here and never printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUN = "screenshot-demo"
CONCEPTS = ("cat", "dog")
ADDED = "horse"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    """Debian's Chromium (``apt-get install chromium``); $CHROMIUM overrides."""
    for p in (os.environ.get("CHROMIUM", ""), *CHROMIUM_CANDIDATES):
        if p and Path(p).is_file():
            return p
    raise SystemExit("no Chromium found: apt-get install chromium (or set CHROMIUM=/path/to/chromium)")


def demo_config(model: str, store: str) -> Any:
    """A tiny but complete erase: every stage runs, a few steps each."""
    from mace_core.config import MaceConfig

    return MaceConfig.model_validate({
        "name": RUN, "seed": 7,
        "concepts": [{"name": c, "type": "object", "mapping": "forest"} for c in CONCEPTS],
        "model": {"path": model}, "prompts": {"num_prompts": 4},
        "images": {"num_images": 2, "steps": 2, "batch_size": 2}, "masks": {"backend": "attention"},
        "prior": {"captions": "miniworld", "shard_size": 5, "batch_size": 4}, "cfr": {"lam": 1.0},
        "lora": {"steps": 2, "learning_rate": 1e-3}, "fusion": {"lam": 1.0},
        "execution": {"store": store, "retries": 0, "retry_delay_s": 0},
    })


def run_demo(work: Path, model: str | None) -> dict[str, Any]:
    """Erase CONCEPTS, then add ADDED; returns the erase-subflow run of the add and what it should show."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey,
                                                FlowRunFilter, FlowRunFilterName)

    from tasks.dashboards import artifact_keys

    from flows.add import AddRequest, add
    from flows.erase import erase
    from mace_core.concepts import Concept

    if model is None:
        from tests.tiny_sd.conftest import build_tiny_pipeline

        model = str(work / "tiny-sd1")
        build_tiny_pipeline("sd1", seed=0).save_pretrained(model, safe_serialization=True)
    store = str(work / "store")
    cfg = demo_config(model, store)
    erase(cfg)
    state = add(AddRequest(run=RUN, add=(Concept(name=ADDED, type="object", mapping="forest"),), store=store),
                return_state=True)
    report = state.result()
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as c:  # the erase subflow whose parent task run belongs to the add run
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"erase-{RUN}"])))
        sub = next(r for r in runs if r.parent_task_run_id is not None
                   and c.read_task_run(r.parent_task_run_id).flow_run_id == parent)
        table = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[sub.id]),
            key=ArtifactFilterKey(any_=[artifact_keys(RUN)["stages"]])))[0]
    return {"flow_run_id": str(sub.id), "flow_run_name": sub.name, "add_run_id": str(parent),
            "stages_artifact_id": str(table.id),
            "concepts": report.concepts, "table": report.concept_stages}


def capture(ui: str, auth: str, demo: dict[str, Any], out: Path, timeout_s: float = 180) -> dict[str, Any]:
    """Four screenshots of the run in headless Chromium; what each page's DOM showed."""
    from playwright.sync_api import sync_playwright

    from tasks.dashboards import artifact_keys

    key = artifact_keys(RUN)["stages"]
    checks: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    ms = timeout_s * 1000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        ctx = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="light")
        token = base64.b64encode(auth.encode()).decode()
        ctx.add_init_script(f"window.localStorage.setItem('prefect-password', {json.dumps(token)});")
        page = ctx.new_page()

        def settle() -> None:
            page.wait_for_load_state("networkidle", timeout=ms)
            time.sleep(2)  # charts and markdown render after the last response

        try:
            # 1. the flow-run page
            page.goto(f"{ui}/runs/flow-run/{demo['flow_run_id']}", timeout=ms)
            page.get_by_text(demo["flow_run_name"]).first.wait_for(timeout=ms)
            settle()
            page.screenshot(path=str(out / "ops-flow-run.png"))
            html = page.content()
            checks["flow_run"] = {"login_passed": "/login" not in page.url, "run_name": demo["flow_run_name"] in html}
            # 2. its task runs, named <stage>-<concept>
            page.get_by_text("Task Runs", exact=True).first.click(timeout=ms)
            page.get_by_text(f"lora-{ADDED}").first.wait_for(timeout=ms)
            settle()
            page.screenshot(path=str(out / "ops-task-runs.png"))
            html = page.content()
            checks["task_runs"] = {c: f"lora-{c}" in html for c in demo["concepts"]}
            # 3. its Artifacts tab
            page.goto(f"{ui}/runs/flow-run/{demo['flow_run_id']}?tab=Artifacts", timeout=ms)
            try:
                page.get_by_text(key).first.wait_for(timeout=30_000)
            except Exception:  # noqa: BLE001 - a UI that ignores ?tab=: click the tab
                page.get_by_text("Artifacts", exact=True).first.click(timeout=ms)
                page.get_by_text(key).first.wait_for(timeout=ms)
            settle()
            page.screenshot(path=str(out / "ops-artifacts-tab.png"))
            html = page.content()
            checks["artifacts_tab"] = {"stages_key": key in html, "model_key": artifact_keys(RUN)["model"] in html,
                                       "progress_key": artifact_keys(RUN)["progress"] in html}
            # 4. the stage-table artifact of this run, rendered
            page.goto(f"{ui}/artifacts/artifact/{demo['stages_artifact_id']}", timeout=ms)
            page.locator("table").first.wait_for(timeout=ms)
            settle()
            page.screenshot(path=str(out / "ops-stage-table.png"))
            cells = page.locator("table").first.inner_text(timeout=ms)
            html = page.content()
            checks["stage_table"] = {"table": "<table" in html, "concepts": all(c in cells for c in demo["concepts"]),
                                     "hit": "hit" in cells, "miss": "miss" in cells, "key": key in html}
        except Exception:
            page.screenshot(path=str(out / "debug-failed.png"))  # what the browser showed when it gave up
            (out / "debug-failed.html").write_text(page.content())
            raise
        browser.close()
    return checks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="Where the PNGs go.")
    ap.add_argument("--model", default=None, help="Diffusers pipeline dir (default: a tiny random SD1).")
    ap.add_argument("--keep", action="store_true", help="Keep the server's PREFECT_HOME and the store.")
    args = ap.parse_args(argv)

    from mace_cli import ops

    work = Path(tempfile.mkdtemp(prefix="mace-screenshots-"))
    auth = f"mace:{secrets.token_urlsafe(16)}"
    srv = ops.LocalServer(work / "prefect-home", auth=auth)
    t0 = time.perf_counter()
    srv.start(timeout_s=300)
    try:
        with srv.settings():
            demo = run_demo(work, args.model)
            t_flows = time.perf_counter()
            checks = capture(srv.url.removesuffix("/api"), auth, demo, args.out)
    finally:
        srv.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"checks": checks, "flow_run_id": demo["flow_run_id"], "table": demo["table"],
              "pngs": sorted(str(p) for p in args.out.glob("ops-*.png")),
              "seconds": {"server_and_flows": round(t_flows - t0, 1),
                          "browser": round(time.perf_counter() - t_flows, 1)}}
    print(json.dumps(result, indent=2))
    ok = all(v for page in checks.values() for v in page.values())
    if not ok:
        print("screenshots: a page check failed (see 'checks')", file=sys.stderr)
    result["ok"] = ok
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main()["ok"] else 1)
