"""The UI as a person sees it: deployments/screenshots.py against a real authenticated server (slow).

The script starts the server, runs a tiny erase and an add, and screenshots the add's erase run in headless
Chromium. Here it writes into a temporary directory; the test checks each page got past the login page and
rendered the run, its artifacts and the stage table (concept names, hit/miss cells), and that the PNGs are
real full-viewport images.
"""

from __future__ import annotations

import importlib.util

import pytest

from mace_cli.ops import REPO

pytestmark = pytest.mark.slow


def load_script():
    spec = importlib.util.spec_from_file_location("mace_screenshots", REPO / "deployments" / "screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_screenshots_show_the_run_and_its_stage_table(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="pip install -e '.[ops]'")
    shots = load_script()
    try:
        shots.chromium_path()
    except SystemExit as exc:
        pytest.skip(str(exc))
    result = shots.main(["--out", str(tmp_path)])
    checks = result["checks"]
    assert result["ok"], checks
    assert checks["flow_run"]["login_passed"] and all(checks["task_runs"].values())
    assert checks["artifacts_tab"]["stages_key"] and checks["stage_table"]["table"]
    # the add run's erase: the new concept computed, the others all cache hits
    table = result["table"]
    assert set(table[shots.ADDED].values()) == {"miss"}
    assert all(set(table[c].values()) == {"hit"} for c in shots.CONCEPTS)
    from PIL import Image

    names = {"ops-flow-run.png", "ops-task-runs.png", "ops-artifacts-tab.png", "ops-stage-table.png"}
    assert {p.name for p in tmp_path.glob("ops-*.png")} == names
    for name in names:
        img = Image.open(tmp_path / name)
        assert img.size == (1440, 1000), (name, img.size)
        assert len(img.getcolors(1 << 20) or ()) > 16, f"{name} is blank"  # a rendered page, not a flat fill
