"""Settings for flows run on Prefect's ephemeral API (no ``PREFECT_API_URL``): no flow-run heartbeats.

Heartbeats let a server mark a flow run Crashed when its process dies (``mace ops`` installs that
automation on a real server). The ephemeral API lives and dies with this process, so nothing can ever act on
them; yet Prefect 3.8 joins the heartbeat thread at every flow run's exit and that thread sleeps in 1 s
steps, which cost 0.46 s of a 5.1 s one-concept erase (two flow runs: erase and its prior subflow).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_run_settings() -> Iterator[None]:
    """Within the block, flow runs on the ephemeral API send no heartbeats; against a server, nothing changes."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if get_current_settings().api.url:  # a real server: keep heartbeats for crash detection
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
