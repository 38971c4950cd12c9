"""Stage ``prompts`` (per concept): template-aligned erased/mapping prompt pairs (spec Stage D) -> parquet."""

from __future__ import annotations

from prefect import get_run_logger, task

from mace_core import prompts as core_prompts
from mace_core.concepts import Concept
from mace_core.config import PromptsConfig
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, finish, key_for, open_store

STAGE, VERSION = "prompts", "1"
TABLE = "prompts.parquet"


@task(name="prompts", task_run_name="prompts-{concept.name}", **TASK_OPTIONS)
def prompts_task(concept: Concept, cfg: PromptsConfig, store_root: str) -> st.ArtifactRef:
    """Prompt table of one concept: columns erased, mapping, target (one row per pair)."""
    store = open_store(store_root)
    config = {"concept": concept, "prompts": cfg}
    key = key_for(STAGE, VERSION, config, {})
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        if cfg.backend != "templates":
            raise NotImplementedError(
                f"prompts.backend={cfg.backend!r} is not available yet: use prompts.backend='templates'"
            )
        pairs = core_prompts.template_prompt_pairs(concept, cfg.num_prompts)
        rows = {
            "erased": [p.erased for p in pairs],
            "mapping": [p.mapping for p in pairs],
            "target": [p.target for p in pairs],
        }
        with store.writer(STAGE, key, config=config, inputs={}, version=VERSION) as out:
            st.save_table(out / TABLE, rows)
        get_run_logger().info("prompts %s: %d pairs", concept.name, len(pairs))
        return finish(store, STAGE, key)


def load_pairs(store: st.ArtifactStore, ref: st.ArtifactRef) -> list[core_prompts.PromptPair]:
    """Read a prompt table back as ``PromptPair`` objects (for downstream tasks)."""
    table = st.load_table(store.path(ref) / TABLE)
    cols = table.to_pydict() if hasattr(table, "to_pydict") else table
    return [core_prompts.PromptPair(e, m, t) for e, m, t in zip(cols["erased"], cols["mapping"], cols["target"],
                                                                  strict=True)]
