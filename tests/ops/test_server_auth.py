"""The Prefect server runs with authentication (issue 9, item 4): a real ``prefect server start`` on 127.0.0.1
with an auth string. Clients without it, or with a wrong one, are refused; an authenticated client works and an
authenticated process worker registers and heartbeats, while a worker without the string never appears."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from mace_cli import ops
from tests.ops.conftest import wait_for


def post(url: str, auth: str | None) -> int:
    """HTTP status of POST ``url`` (an API read) with HTTP basic auth ``auth`` (``user:password``) or none."""
    req = urllib.request.Request(url, data=json.dumps({}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_server_binds_loopback_and_refuses_unauthenticated_clients(server):
    assert server.host == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    auth = server.env["PREFECT_API_AUTH_STRING"]
    assert post(f"{server.url}/flows/filter", None) == 401
    assert post(f"{server.url}/flows/filter", auth + "x") == 401
    assert post(f"{server.url}/flows/filter", auth) == 200


def test_prefect_client_needs_the_auth_string(server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    with get_client(sync_client=True) as c:  # the fixture's settings: authenticated
        c.read_flows(limit=1)
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "mace:wrong"}):
        with get_client(sync_client=True) as c, pytest.raises(Exception, match="401"):
            c.read_flows(limit=1)


def test_authenticated_worker_registers_and_unauthenticated_one_does_not(server, tmp_path):
    from prefect.client.orchestration import get_client

    ops.setup(gpu_slots=1, pools=("cpu",))
    good = ops.start_worker(server.env, "cpu", "auth-ok", tmp_path, extra_env={"PREFECT_WORKER_HEARTBEAT_SECONDS": "5"})
    bad_env = {**server.env, "PREFECT_API_AUTH_STRING": "mace:wrong"}
    bad = ops.start_worker(bad_env, "cpu", "auth-bad", tmp_path)
    try:
        def worker_names():
            with get_client(sync_client=True) as c:
                return {w.name for w in c.read_workers_for_work_pool("cpu")}

        wait_for(lambda: "auth-ok" in worker_names(), 240, what="the authenticated worker to register")
        assert bad.wait(timeout=240) != 0  # refused at start-up: it exits instead of polling
        assert "auth-bad" not in worker_names() and good.poll() is None
        log = (tmp_path / "worker-auth-bad.log").read_text(errors="replace")
        assert "401" in log or "Unauthorized" in log, log[-2000:]
        assert "mace:wrong" not in log and server.env["PREFECT_API_AUTH_STRING"] not in log  # never logged
    finally:
        for p in (good, bad):
            ops.stop_tree(p, grace_s=30)
