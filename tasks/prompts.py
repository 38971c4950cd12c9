"""Stage ``prompts`` (per concept): erased/mapping prompt pairs (spec Stage D) -> parquet.

Backends (``prompts.backend``):

- ``templates``: the official template-aligned pairs (``mace_core.prompts.template_prompt_pairs``);
- ``llm``: prompts written by an OpenAI-compatible chat model (``mace_core.augment.llm_prompt_pairs``), each
  validated against the base model's tokenizer(s) and turned into a template-aligned pair. The key holds
  ``augment.augment_cache_fields`` (backend, model, temperature, instruction version and digest, concept, N,
  seed_k) plus the tokenizer digest (validation depends on it); never the API key, which is read while the
  stage computes from the environment or, when no key variable is set, from the Prefect Secret block
  ``mace-llm-api-key`` (``llm_environ``), and is held in memory only.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from mace_core import augment
from mace_core import prompts as core_prompts
from mace_core.concepts import Concept
from mace_core.config import ModelConfig, PromptsConfig
from mace_core.seeds import concept_seed
from tasks import formats
from tasks import store as st
from tasks._cache import TASK_OPTIONS, cached_stage, files_digest, finish, key_for, model_dir, open_store

STAGE, VERSION = "prompts", "1"
#: Prefect Secret block that holds the LLM API key when no key environment variable is set.
LLM_KEY_BLOCK = "mace-llm-api-key"
TABLE = "prompts.parquet"
TOKENIZER_DIRS = ("tokenizer", "tokenizer_2")


@task(name="prompts", task_run_name="prompts-{concept.name}", **TASK_OPTIONS)
def prompts_task(concept: Concept, cfg: PromptsConfig, store_root: str, seed: int | None = None,
                 model: ModelConfig | None = None) -> st.ArtifactRef:
    """Prompt table of one concept: columns erased, mapping, target (one row per pair).

    ``seed`` (the run's global seed) and ``model`` are needed by the ``llm`` backend only: the request seed
    is ``concept_seed(seed, name)`` and every prompt must fit the model's tokenizer(s).
    """
    store = open_store(store_root)
    if cfg.backend == "llm":
        return _llm_prompts(store, concept, cfg, seed, model)
    if cfg.backend != "templates":
        raise ValueError(f"prompts.backend={cfg.backend!r} is unknown: use 'templates' or 'llm'")
    config = {"concept": concept, "prompts": cfg}
    key = key_for(STAGE, VERSION, config, {})
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        pairs = core_prompts.template_prompt_pairs(concept, cfg.num_prompts)
        with store.writer(STAGE, key, config=config, inputs={}, version=VERSION) as out:
            formats.save_table(out / TABLE, _rows(pairs))
        get_run_logger().info("prompts %s: %d pairs", concept.name, len(pairs))
        return finish(store, STAGE, key)


def llm_environ() -> Mapping[str, str]:
    """Where the LLM client reads its key: the environment, or (no key variable set) the environment plus the
    value of the Prefect Secret block ``LLM_KEY_BLOCK`` when the API has one. The value stays in memory."""
    if any(os.environ.get(var, "").strip() for var in augment.API_KEY_ENV_VARS):
        return os.environ
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(LLM_KEY_BLOCK).get()
    except ValueError:  # no such block
        return os.environ
    return {**os.environ, augment.API_KEY_ENV_VARS[0]: str(value)}


def _llm_prompts(store: st.ArtifactStore, concept: Concept, cfg: PromptsConfig, seed: int | None,
                 model: ModelConfig | None) -> st.ArtifactRef:
    """The ``llm`` backend: cached by (backend, model, instruction, concept, N, seed_k, tokenizer digest)."""
    if seed is None or model is None:
        raise TypeError("prompts_task with prompts.backend='llm' needs seed= and model= (the run's seed and model)")
    settings = augment.settings_from_config(cfg)
    seed_k = concept_seed(seed, concept.name)
    mdir = model_dir(model.path)
    key, config, inputs = llm_key(concept, cfg, seed, model)
    with cached_stage(store, STAGE, key, concept.name) as rec:
        if rec.ref is not None:
            return rec.ref
        pairs = augment.llm_prompt_pairs(concept, cfg.num_prompts, seed_k, settings, cfg.llm_max_retries,
                                         load_tokenizers(mdir), environ=llm_environ())
        with store.writer(STAGE, key, config=config, inputs=inputs, version=VERSION) as out:
            formats.save_table(out / TABLE, _rows(pairs))
        get_run_logger().info("prompts %s: %d pairs from %s (seed_k=%d)", concept.name, len(pairs),
                              settings.model, seed_k)
        return finish(store, STAGE, key)


def llm_key(concept: Concept, cfg: PromptsConfig, seed: int, model: ModelConfig) -> tuple[str, dict, dict]:
    """(key, config, inputs) of the ``llm`` backend: ``augment.augment_cache_fields`` of (model, instruction,
    concept, N, seed_k) + the tokenizer digest. No secret, no base URL, no retry bound enters it."""
    settings = augment.settings_from_config(cfg)
    config = augment.augment_cache_fields(settings, concept, cfg.num_prompts, concept_seed(seed, concept.name))
    inputs = {"tokenizer": files_digest(model_dir(model.path), TOKENIZER_DIRS)}
    return key_for(STAGE, VERSION, config, inputs), config, inputs


def _rows(pairs: list[core_prompts.PromptPair]) -> dict[str, list[str]]:
    return {"erased": [p.erased for p in pairs], "mapping": [p.mapping for p in pairs],
            "target": [p.target for p in pairs]}


def load_tokenizers(mdir: Path) -> list[Any]:
    """The pipeline's tokenizers (``tokenizer``[, ``tokenizer_2``]) without loading any weights.

    Each is built with the class ``model_index.json`` names for it, as ``DiffusionPipeline`` would.
    """
    index = json.loads((Path(mdir) / "model_index.json").read_text(encoding="utf-8"))
    toks = []
    for name in TOKENIZER_DIRS:
        spec = index.get(name)
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] and spec[1]):
            continue
        library, cls_name = spec
        cls = getattr(importlib.import_module(library), cls_name, None)
        if cls is None:
            from transformers import AutoTokenizer as cls
        toks.append(cls.from_pretrained(Path(mdir) / name))
    if not toks:
        raise ValueError(f"model {str(mdir)!r} has no tokenizer in model_index.json: prompts.backend='llm' needs one")
    return toks


def load_pairs(store: st.ArtifactStore, ref: st.ArtifactRef) -> list[core_prompts.PromptPair]:
    """Read a prompt table back as ``PromptPair`` objects (for downstream tasks)."""
    table = formats.load_table(store.path(ref) / TABLE)
    cols = table.to_pydict() if hasattr(table, "to_pydict") else table
    return [core_prompts.PromptPair(e, m, t) for e, m, t in zip(cols["erased"], cols["mapping"], cols["target"],
                                                                  strict=True)]
