"""The CLI's stage bars count every task body once, even when a stage's bodies start in parallel threads."""

from __future__ import annotations

import threading
import time

from rich.progress import Progress

from mace_cli.main import StageBars
from tasks._cache import StageEvent


class _SlowProgress(Progress):
    """Widens the window between checking for a stage's bar and creating it, as a loaded machine does."""

    def add_task(self, *args, **kwargs):
        time.sleep(0.01)
        return super().add_task(*args, **kwargs)


def test_parallel_bodies_of_one_stage_share_one_bar_and_all_counts():
    bars = StageBars(_SlowProgress(disable=True))
    events = [StageEvent(stage="images", concept=f"c{i}", key=str(i), scope=None) for i in range(8)]
    start = threading.Barrier(len(events))

    def body(event: StageEvent) -> None:
        start.wait()
        bars("start", event, {})
        event.hit = True
        bars("end", event, {})

    threads = [threading.Thread(target=body, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tasks = bars.progress.tasks
    assert len(tasks) == 1
    assert tasks[0].total == tasks[0].completed == len(events)


def test_inner_bar_is_removed_when_its_body_ends():
    bars = StageBars(Progress(disable=True))
    event = StageEvent(stage="lora", concept="cat", key="k", scope=None)
    bars("start", event, {})
    bars("progress", event, {"done": 3, "total": 10})
    assert len(bars.progress.tasks) == 2
    event.hit = False
    bars("end", event, {})
    assert [t.description for t in bars.progress.tasks] == ["lora"]
