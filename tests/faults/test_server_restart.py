"""A Prefect server restart in the middle of a ``mace erase`` (issue 8, bad input and faults) - slow.

A real authenticated server (``mace_cli.ops.LocalServer``); ``mace erase`` runs in its own process against it.
When the first LoRA artifact is published, the server is stopped and started again on the same port and home.
The run either recovers or fails with a one-line error; either way no published artifact is lost, the store
verifies clean (apart from a dead writer's staging entry), and a rerun ends bit-identical to a clean run.
"""

from __future__ import annotations

import secrets
import time

import pytest

from mace_cli import ops

from .test_pipeline_faults import (  # noqa: F401 - fixtures used by name
    Mace,
    assert_consistent_after_kill,
    child_env,
    clean,
    config_data,
    fault_model,
    published,
    run_weights,
    same_weights,
    write_config,
)

pytestmark = pytest.mark.slow


def test_server_restart_during_erase(tmp_path, fault_model, clean):  # noqa: F811
    root, home = tmp_path / "store", tmp_path / "server-home"
    auth = f"mace:{secrets.token_urlsafe(16)}"
    server = ops.LocalServer(home, auth=auth).start(timeout_s=240)
    try:
        cfg = write_config(tmp_path / "config.yaml", config_data(fault_model, root))
        env = child_env(tmp_path / "client-home", server.url, PREFECT_API_AUTH_STRING=auth)
        mace = Mace(["erase", cfg], tmp_path, env, "erase")
        deadline = time.monotonic() + 900
        while not any(stage == "lora" for stage, _ in published(root)):
            assert mace.proc.poll() is None, mace.output()[-3000:]
            assert time.monotonic() < deadline, "no LoRA artifact within 900 s"
            time.sleep(0.05)
        before = published(root)
        server.stop()
        down_s = time.monotonic()
        server = ops.LocalServer(home, auth=auth, port=server.port).start(timeout_s=240)
        down_s = time.monotonic() - down_s
        rc = mace.wait(timeout=900)
        out = mace.output()
        if rc != 0:  # failed visibly: one error line, no traceback
            err = [ln for ln in mace.err.read_text(errors="replace").splitlines() if ln.startswith("error: ")]
            assert len(err) == 1 and "Traceback" not in out, out[-3000:]
        visible, _ = assert_consistent_after_kill(root, before)
        print(f"\nRESTART server down {down_s:.0f} s; erase exit {rc}; published before {len(before)}, after "
              f"{len(visible)}")
        # the rerun (against the restarted server) reuses everything published and matches a clean run
        again = Mace(["erase", cfg], tmp_path, env, "rerun")
        assert again.wait(timeout=900) == 0, again.output()[-3000:]
        assert published(root) >= visible
        assert same_weights(run_weights(root), clean["weights"])
    finally:
        server.stop()
