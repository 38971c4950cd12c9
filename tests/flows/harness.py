"""One Prefect test harness per pytest process, shared by tests/flows and tests/cli.

Two session fixtures that each entered ``prefect_test_harness`` would nest harnesses, which breaks later
tests (prefect_notes.md §5); this module starts it once and the fixture that started it stops it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_ACTIVE: list[object] = []


@contextlib.contextmanager
def shared_harness() -> Iterator[None]:
    if _ACTIVE:
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    cm = prefect_test_harness(server_startup_timeout=180)
    cm.__enter__()
    _ACTIVE.append(cm)
    try:
        yield
    finally:
        _ACTIVE.clear()
        cm.__exit__(None, None, None)
