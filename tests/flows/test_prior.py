"""The prior flow: caption set -> Gram in zarr, shard by shard, resumable; used by CFR when weighted."""

from __future__ import annotations

import pytest
import torch

from tests.flows.conftest import CAPTIONS, make_config


def _cfg(tiny_model, store_root, captions_file, **over):
    return make_config(tiny_model, store_root, concepts=("cat",),
                       prior={"captions": captions_file, "shard_size": 5, "batch_size": 4},
                       cfr={"lam": 0.0, "prior_weight": 1.0}, masks={"backend": "none"}, **over)


def test_prior_shards_sum_to_the_one_shot_gram_and_resume(tiny_model, store_root, captions_file, monkeypatch):
    from flows.prior import prior
    from mace_core import models, text_stats
    from tasks._cache import open_store
    from tasks.prior import load_gram

    cfg = _cfg(tiny_model, store_root, captions_file)
    real = text_stats.prior_gram
    calls = {"n": 0}

    def dies_on_third_shard(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(text_stats, "prior_gram", dies_on_third_shard)
    cfg0 = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"retries": 0})})
    with pytest.raises(RuntimeError):
        prior(cfg0)
    store = open_store(store_root)
    assert len(store.ls("prior_shard")) == 2 and store.verify() == []
    # resume: only the missing shard is computed (3 shards of 5 captions for 12 captions)
    calls["n"] = 10
    P, D = prior(cfg0)
    assert calls["n"] == 11 and len(store.ls("prior_shard")) == 3 and D is None
    one_shot = real(models.load_pipeline(tiny_model), CAPTIONS, batch_size=4)
    torch.testing.assert_close(load_gram(store, P), one_shot.gram, rtol=1e-10, atol=1e-9)


def test_erase_with_prior_reuses_it(tiny_model, store_root, captions_file, counting):
    from flows.erase import erase

    cfg = _cfg(tiny_model, store_root, captions_file, lora={"steps": 1}, fusion={"lam": 0.0, "prior_weight": 1.0})
    first = erase(cfg)
    assert first.row("prior").misses == 1 and first.row("prior_shard").misses == 3
    n = counting.get("prior_gram", 0)
    again = erase(cfg)
    assert again.misses == 0 and counting.get("prior_gram", 0) == n
