"""Ops fixtures: one authenticated Prefect server on 127.0.0.1 per module, process workers, a tiny model.

The server is real (`prefect server start`, its own PREFECT_HOME, a random free port, an auth string that
lives only in the environment); this process talks to it through ``temporary_settings``.
"""

from __future__ import annotations

import secrets
import time

import pytest

from mace_cli import ops


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ops.LocalServer(tmp_path_factory.mktemp("prefect_home"), auth=f"mace:{secrets.token_urlsafe(16)}")
    srv.start(timeout_s=240)
    try:
        with srv.settings():
            yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from tests.tiny_sd.conftest import build_tiny_pipeline

    path = tmp_path_factory.mktemp("ops_model") / "sd1"
    build_tiny_pipeline("sd1", seed=0).save_pretrained(path, safe_serialization=True)
    return str(path)


def wait_for(pred, timeout_s: float, every: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
