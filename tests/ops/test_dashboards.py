"""Dashboards in the Prefect API: every erase/add run publishes its stage table, model link and LoRA progress.

Runs on the ephemeral test API (no server process): a tiny erase of two concepts, its artifacts read back
with the Prefect client; a rerun reads all hits; an ``add`` run shows the new concept's misses; a failing
LoRA leaves a one-line flow failure naming the stage and concept, and a table with that cell ``failed``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.dashboards import CONCEPT_STAGES, artifact_keys, concept_status, slug
from tests.flows.conftest import make_config


@pytest.fixture(scope="module", autouse=True)
def harness():
    from tests.flows.harness import shared_harness

    with shared_harness():
        yield


def run_artifacts(flow_run_id) -> dict[str, object]:
    """The artifacts of one flow run, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


def flow_run_and_task_runs(flow_run_id):
    """The flow run and its task runs, read back from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        flow_run = c.read_flow_run(flow_run_id)
        task_runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return flow_run, task_runs


def parse_tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (header first, separator dropped)."""
    tables, cur = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cur is None:
                cur = []
                tables.append(cur)
            if set("".join(cells)) != {"-"}:
                cur.append(cells)
        else:
            cur = None
    return tables


def stage_table(flow_run_id, run: str) -> tuple[dict[str, dict[str, str]], dict[str, tuple[int, int]], str]:
    md = run_artifacts(flow_run_id)[artifact_keys(run)["stages"]].data
    concepts, stages = parse_tables(md)
    assert concepts[0] == ["concept", *CONCEPT_STAGES], concepts[0]
    assert stages[0] == ["stage", "hits", "misses", "seconds"], stages[0]
    return ({r[0]: dict(zip(CONCEPT_STAGES, r[1:])) for r in concepts[1:]},
            {r[0]: (int(r[1]), int(r[2])) for r in stages[1:]}, md)


def test_keys_are_prefect_slugs():
    assert slug("Test_Run.v2") == "test-run-v2" and slug("__") == "run"
    assert artifact_keys("My.Run")["stages"] == "mace-my-run-stages"


def test_latest_attempt_decides_a_cell():
    from tasks._cache import StageEvent

    ev = [StageEvent("lora", "cat", hit=None, start=1.0, end=2.0, error="RuntimeError: transient"),
          StageEvent("lora", "cat", hit=False, start=3.0, end=4.0),
          StageEvent("images", "cat", hit=True, start=0.5, end=0.6),
          StageEvent("lora", "dog", hit=None, start=1.0, end=None),
          StageEvent("cfr", None, hit=False, start=5.0, end=6.0)]
    got = concept_status(ev, ["cat", "dog"])
    assert got["cat"]["lora"] == "miss" and got["cat"]["images"] == "hit" and got["cat"]["masks"] == "-"
    assert got["dog"]["lora"] == "running" and set(got) == {"cat", "dog"}


def test_erase_and_rerun_publish_stage_table_link_and_progress(tiny_model, tmp_path):
    from flows.add import AddRequest, add
    from flows.erase import erase
    from mace_core.concepts import Concept

    store = str(tmp_path / "store")
    cfg = make_config(tiny_model, store, concepts=("cat", "dog"), name="Dash_Run")
    keys = artifact_keys(cfg.name)
    # 1. cold run: every per-concept stage a miss, set stages as the report counted them
    state = erase(cfg, return_state=True)
    report = state.result()
    fr = state.state_details.flow_run_id
    cells, stages, md = stage_table(fr, cfg.name)
    assert set(cells) == {"cat", "dog"}
    for c in ("cat", "dog"):
        assert cells[c] == {s: "miss" for s in CONCEPT_STAGES}, (c, cells[c])
    assert stages == {r.stage: (r.hits, r.misses) for r in report.stages}
    assert {"prompts", "images", "masks", "stats", "cfr_concept", "cfr", "lora", "fusion", "export"} <= set(stages)
    assert report.concept_stages == cells
    arts = run_artifacts(fr)
    # a link artifact is stored as markdown "[text](url)" (Prefect 3.8)
    assert f"]({Path(report.output).as_uri()})" in arts[keys["model"]].data
    assert arts[keys["progress"]].type == "progress" and float(arts[keys["progress"]].data) == 100.0
    assert report.output in md
    # the flow run carries the run's tags (the UI's tag filter); its task runs carry none, so Prefect makes no
    # per-task tag-concurrency round trip (flows.erase.tag_flow_run)
    flow_run, task_runs = flow_run_and_task_runs(fr)
    assert {"mace", "run:Dash_Run", "concept:cat", "concept:dog"} <= set(flow_run.tags), flow_run.tags
    assert task_runs and all(not t.tags for t in task_runs), [t.tags for t in task_runs if t.tags]
    assert {"lora-cat", "lora-dog", "images-cat"} <= {t.name for t in task_runs}
    # 2. rerun: the same table, all hits
    state2 = erase(cfg, return_state=True)
    cells2, stages2, _ = stage_table(state2.state_details.flow_run_id, cfg.name)
    assert all(v == "hit" for row in cells2.values() for v in row.values()), cells2
    assert all(m == 0 and h > 0 for h, m in stages2.values()), stages2
    # 3. add one concept: the add run's own table shows only the new concept's stages as misses
    state3 = add(AddRequest(run=cfg.name, add=(Concept(name="horse", type="object", mapping="forest"),),
                            store=store), return_state=True)
    cells3, stages3, _ = stage_table(state3.state_details.flow_run_id, cfg.name)
    assert cells3["horse"] == {s: "miss" for s in CONCEPT_STAGES}
    assert cells3["cat"] == cells3["dog"] == {s: "hit" for s in CONCEPT_STAGES}
    assert stages3["lora"] == (2, 1) and stages3["fusion"] == (0, 1)


def test_failed_stage_is_one_line_naming_stage_and_concept(tiny_model, tmp_path, monkeypatch):
    from flows.erase import erase
    from mace_core import lora

    def bad(*a, **k):
        raise ValueError("bad training data\n(second line)")

    monkeypatch.setattr(lora, "train_concept_lora", bad)
    cfg = make_config(tiny_model, str(tmp_path / "store"), concepts=("cat",), masks={"backend": "none"},
                      name="dash-fail")
    state = erase(cfg, return_state=True)
    assert state.is_failed()
    msg = state.message
    assert "\n" not in msg and "stage lora of concept 'cat' failed: bad training data (second line)" in msg, msg
    with pytest.raises(ValueError, match="stage lora of concept 'cat' failed"):
        state.result()
    cells, _, md = stage_table(state.state_details.flow_run_id, cfg.name)
    assert cells["cat"]["lora"] == "failed" and cells["cat"]["masks"] == "-" and cells["cat"]["prompts"] == "miss"
    assert "**Failed:** ValueError: stage lora of concept 'cat' failed" in md


def test_run_tags_fit_a_prefect_event_at_100_concepts(tmp_path):
    """Concept tags up to MAX_CONCEPT_TAGS concepts; beyond, none, so a task-run event (one related resource
    per tag, at most 100 in all) stays valid. With every concept tagged, a 100-concept erase crashed."""
    from prefect.events import Event

    from flows.erase import MAX_CONCEPT_TAGS, run_tags

    def event_with(tags):
        related = [{"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"} for t in tags]
        related += [{"prefect.resource.id": f"prefect.{kind}.0", "prefect.resource.role": kind}
                    for kind in ("flow-run", "flow", "task-run", "deployment", "work-pool", "work-queue")]
        return Event(event="prefect.task-run.Pending", resource={"prefect.resource.id": "prefect.task-run.1"},
                     related=related)

    def config(n):
        return make_config(str(tmp_path), str(tmp_path), concepts=tuple(f"thing{i}" for i in range(n)))

    few = run_tags(config(MAX_CONCEPT_TAGS))
    assert few[:2] == ["mace", "run:test-run"] and len(few) == 2 + MAX_CONCEPT_TAGS
    event_with(few)
    many = config(100)
    assert run_tags(many) == ["mace", "run:test-run"]
    event_with(run_tags(many))
    with pytest.raises(ValueError, match="maximum number of related resources"):  # why the cap exists
        event_with(["mace", "run:test-run", *(f"concept:{c.name}" for c in many.concepts)])
