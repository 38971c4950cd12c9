"""Flow ``mace-prior``: a caption set -> the general prior Gram P (and the domain Gram D) in zarr.

Run alone (``mace prior CONFIG`` / a deployment) to precompute P for a model once, or as a subflow of
``mace-erase``. The captions are frozen into an artifact, then accumulated shard by shard: each shard is
its own artifact, so a killed run resumes at the first missing shard. With ``prior.exclude_erased`` the run's P is
that shared sum minus the Gram of the captions naming an erased concept (one more ``prior`` artifact per erased
set), so growing the concept list never re-encodes the corpus.
"""

from __future__ import annotations

import math

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from mace_core.config import MaceConfig
from tasks import store as st
from tasks._cache import files_digest, model_dir, open_store, with_retries
from tasks.prior import (captions_task, domain_prior_task, load_count, prior_exclusion_task, prior_merge_task,
                         prior_shard_task)


@flow(name="mace-prior", flow_run_name="prior-{cfg.name}", task_runner=ThreadPoolTaskRunner(),
      persist_result=False)  # validated: deployment runs pass cfg as JSON
def prior(cfg: MaceConfig) -> tuple[st.ArtifactRef | None, st.ArtifactRef | None]:
    """(P, D) refs for ``cfg.model`` and ``cfg.prior``; D is None without a retain list."""
    from flows.erase import dominant_type, needs_domain, settle

    log = get_run_logger()
    root, m, ex = cfg.execution.store, cfg.model, cfg.execution
    # 1. text-encoder digest (P and D depend on the text encoder + tokenizer only)
    text_digest = files_digest(model_dir(m.path), ("text_encoder", "tokenizer"))
    # 2. freeze the caption set
    captions = with_retries(captions_task, ex.retries, ex.retry_delay_s)(cfg.prior, root)
    n = load_count(open_store(root), captions)
    # 3. one Gram per shard (resumable), then P = their sum in shard order
    n_shards = math.ceil(n / cfg.prior.shard_size)
    shard_task = with_retries(prior_shard_task, ex.retries, ex.retry_delay_s)
    shards = [shard_task.submit(captions, i, cfg.prior, m, text_digest, root, ex.lora_concurrency)
              for i in range(n_shards)]
    settle(shards)
    P = with_retries(prior_merge_task, ex.retries, ex.retry_delay_s)(shards, root)
    log.info("prior: %d captions in %d shards", n, n_shards)
    if cfg.prior.exclude_erased and cfg.concepts:  # the shared P minus the captions that name an erased concept
        phrases = tuple(p for c in cfg.concepts for p in (c.name, *c.synonyms))
        P = with_retries(prior_exclusion_task, ex.retries, ex.retry_delay_s)(P, captions, phrases, cfg.prior, m,
                                                                              text_digest, root, ex.lora_concurrency)
    # 4. domain prior D from the retain list (only when something weights it)
    D = None
    if needs_domain(cfg):
        domain_task = with_retries(domain_prior_task, ex.retries, ex.retry_delay_s)
        D = domain_task(cfg.prior, dominant_type(cfg.concepts), m, text_digest, root, ex.lora_concurrency)
    return P, D
