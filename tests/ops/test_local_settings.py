"""flows.local: heartbeats are dropped on the ephemeral API only (a server keeps its crash detection)."""

from __future__ import annotations

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from flows.local import local_run_settings


def heartbeat() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


def test_ephemeral_api_runs_without_heartbeats_and_restores_the_setting():
    with temporary_settings(updates={PREFECT_API_URL: None}):
        before = heartbeat()
        assert before is not None  # Prefect's default: heartbeats on
        with local_run_settings():
            assert heartbeat() is None
        assert heartbeat() == before


def test_a_server_keeps_its_heartbeats():
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        before = heartbeat()
        with local_run_settings():
            assert heartbeat() == before is not None
