"""Dashboards: what a run publishes to the Prefect UI (artifacts), built from the run's hit/miss ledger.

One job: turn a run's :class:`~tasks._cache.StageEvent` list and report into Prefect artifacts on the
current flow run (prefect_notes.md §4, "Artifacts"):

- ``mace-<run>-stages`` (markdown): a concepts x stages table with each cell ``hit`` / ``miss`` / ``failed``
  (``-`` when the stage does not apply, e.g. no masks), a table of the set-level stages with hit/miss counts
  and seconds, the output model, and on failure the one-line reason;
- ``mace-<run>-model`` (link): the exported diffusers pipeline directory;
- ``mace-<run>-lora-progress`` (progress): LoRA jobs finished / total, updated as each one finishes.

Keys are lowercase-dash slugs of the run name (Prefect refuses anything else), so each run name has one
versioned artifact per kind on the Artifacts page. Publishing never fails a run: an API error is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from tasks._cache import StageEvent

__all__ = ["CONCEPT_STAGES", "LoraProgress", "artifact_keys", "concept_status", "publish_run", "slug",
           "stages_markdown"]

# Per-concept stages in pipeline order (set stages, concept=None, go to the second table).
CONCEPT_STAGES = ("prompts", "images", "masks", "stats", "cfr_concept", "lora")
NOT_RUN = "-"

log = logging.getLogger(__name__)


def slug(text: str) -> str:
    """Lowercase letters, digits and single dashes (Prefect artifact keys); never empty."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "run"


def artifact_keys(run: str) -> dict[str, str]:
    """The artifact keys of run ``run``: stages table, model link, LoRA progress."""
    base = f"mace-{slug(run)}"
    return {"stages": f"{base}-stages", "model": f"{base}-model", "progress": f"{base}-lora-progress"}


def _status(event: StageEvent) -> str:
    if event.hit is True:
        return "hit"
    if event.hit is False:
        return "miss"
    return "failed" if event.error else "running"


def concept_status(events: Iterable[StageEvent], concepts: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{concept: {stage: hit|miss|failed|running|-}}`` for :data:`CONCEPT_STAGES`.

    The latest attempt of a (concept, stage) decides (a retried task that failed once and then trained
    reads ``miss``); a stage the run never started for that concept reads ``-``.
    """
    latest: dict[tuple[str, str], StageEvent] = {}
    for e in sorted(events, key=lambda e: e.start):
        if e.concept is not None:
            latest[(e.concept, e.stage)] = e
    return {c: {s: _status(latest[(c, s)]) if (c, s) in latest else NOT_RUN for s in CONCEPT_STAGES}
            for c in concepts}


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def stages_markdown(run: str, status: Mapping[str, Mapping[str, str]], rows: Sequence[Any],
                    output: str | None = None, failure: str | None = None, wall_s: float | None = None) -> str:
    """The run report as markdown: concept x stage table, set-stage table, output, failure line."""
    hits = sum(r.hits for r in rows)
    misses = sum(r.misses for r in rows)
    head = f"## MACE run `{run}`: {'FAILED' if failure else 'completed'}"
    lines = [head, "", f"{len(status)} concept(s), {hits} cache hit(s), {misses} miss(es)"
             + (f", {wall_s:.1f} s" if wall_s is not None else "") + ".", ""]
    if failure:
        lines += [f"**Failed:** {failure}", ""]
    lines += ["### Concepts", "", _row(("concept", *CONCEPT_STAGES)), _row(["---"] * (len(CONCEPT_STAGES) + 1))]
    lines += [_row((c, *(cells[s] for s in CONCEPT_STAGES))) for c, cells in status.items()]
    lines += ["", "### Stages", "", _row(("stage", "hits", "misses", "seconds")), _row(["---"] * 4)]
    lines += [_row((r.stage, r.hits, r.misses, f"{r.seconds:.1f}")) for r in rows]
    if output:
        lines += ["", f"Output model: `{output}`"]
    return "\n".join(lines) + "\n"


def _link(output: str) -> str:
    """A clickable URL for the output: ``file://`` for a local path, the fsspec URL otherwise."""
    return output if "://" in output else Path(output).resolve().as_uri()


def publish_run(run: str, status: Mapping[str, Mapping[str, str]], rows: Sequence[Any],
                output: str | None = None, failure: str | None = None,
                wall_s: float | None = None) -> dict[str, UUID]:
    """Stages table (+ model link when there is an output) on the current flow run; ids by kind."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    keys, ids = artifact_keys(run), {}
    try:
        ids["stages"] = create_markdown_artifact(
            markdown=stages_markdown(run, status, rows, output, failure, wall_s), key=keys["stages"],
            description=f"MACE run {run}: per-concept stage status and cache hits")
        if output:
            ids["model"] = create_link_artifact(link=_link(output), link_text=output, key=keys["model"],
                                                description=f"MACE run {run}: exported diffusers pipeline")
    except Exception:  # noqa: BLE001 - a dashboard must never fail the run
        log.warning("could not publish the dashboards of run %s", run, exc_info=True)
    return ids


class LoraProgress:
    """The ``mace-<run>-lora-progress`` artifact: percent of LoRA jobs finished (hit, trained or failed)."""

    def __init__(self, run: str, total: int) -> None:
        self.run, self.total, self.done, self.id = run, max(total, 1), 0, None
        try:
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(progress=0.0, key=artifact_keys(run)["progress"],
                                               description=self._describe())
        except Exception:  # noqa: BLE001
            log.warning("could not create the LoRA progress artifact of run %s", run, exc_info=True)

    def _describe(self) -> str:
        return f"MACE run {self.run}: {self.done}/{self.total} LoRA job(s) finished"

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total

    def step(self) -> None:
        self.done = min(self.done + 1, self.total)
        if self.id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.id, progress=self.percent, description=self._describe())
        except Exception:  # noqa: BLE001
            log.warning("could not update the LoRA progress artifact of run %s", self.run, exc_info=True)

    def track(self, futures: Iterable[Any]) -> None:
        """Block until every future is final, stepping once per finished one (whatever its state)."""
        from prefect.futures import as_completed

        for _ in as_completed([f for f in futures if f is not None]):
            self.step()
