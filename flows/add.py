"""Flow ``mace-add``: grow (or shrink) the concept set of a finished run.

The new set is erased with the run's own config; every artifact that does not depend on the change is a
store hit. In ``independent`` mode adding a concept trains exactly one LoRA (plus CFR, fusion and export),
and removing one trains nothing (CFR and fusion are re-solved from the cached statistics and LoRAs).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.erase import RunReport, erase
from mace_core.concepts import Concept
from mace_core.config import MaceConfig
from tasks import dashboards
from tasks._cache import open_store


class AddRequest(BaseModel):
    """One change to a recorded run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str = Field(min_length=1, description="Recorded run to start from (its config is reused).")
    add: tuple[Concept, ...] = Field(default=(), description="Concepts to add.")
    remove: tuple[str, ...] = Field(default=(), description="Concept names to remove.")
    store: str = Field(default="artifacts", min_length=1, description="Artifact store root.")
    name: str | None = Field(default=None, description="Record the result under this run name (default: run).")


def load_run_config(store_root: str, run: str) -> MaceConfig:
    """The config a run was recorded with; ValueError naming the known runs if it is missing."""
    store = open_store(store_root)
    known = [r["run_id"] for r in store.list_runs()]
    if run not in known:
        raise ValueError(f"run {run!r} is not recorded in store {store_root!r} (known runs: "
                         f"{', '.join(known) or 'none'})")
    return MaceConfig.model_validate(store.read_run(run)["meta"]["config"])


def changed_config(base: MaceConfig, req: AddRequest) -> MaceConfig:
    """``base`` with concepts added/removed (validated: duplicates, unknown removals, empty set)."""
    have = {c.key: c for c in base.concepts}
    for name in req.remove:
        if name.casefold() not in have:
            erased = ", ".join(c.name for c in base.concepts)
            raise ValueError(f"cannot remove {name!r}: run {req.run!r} erases {erased}")
    for c in req.add:
        if c.key in have:
            raise ValueError(f"concept {c.name!r} is already erased by run {req.run!r}: list each concept once")
    if not req.add and not req.remove:
        raise ValueError("nothing to do: give concepts to add or names to remove")
    drop = {n.casefold() for n in req.remove}
    concepts = tuple(c for c in base.concepts if c.key not in drop) + tuple(req.add)
    data = base.model_dump(mode="json")
    data["concepts"] = [c.model_dump(mode="json") for c in concepts]
    data["name"] = req.name or req.run
    data["execution"] = {**data["execution"], "store": req.store}
    return MaceConfig.model_validate(data)


@flow(name="mace-add", flow_run_name="add-{req.run}", persist_result=False)  # validated: deployments pass JSON
def add(req: AddRequest) -> RunReport:
    """Erase the run's concept set with ``req.add`` added and ``req.remove`` removed."""
    # 1. the run's recorded config, changed
    cfg = changed_config(load_run_config(req.store, req.run), req)
    get_run_logger().info("run %s: +%s -%s", req.run, [c.name for c in req.add], list(req.remove))
    # 2. erase the new set (everything unchanged is a store hit)
    report = erase(cfg)
    # 3. the same dashboards on the add run itself (the erase subflow run has its own)
    dashboards.publish_run(report.run_id, report.concept_stages, report.stages, report.output,
                           wall_s=report.wall_s)
    return report
