"""The prior flow: caption set -> Gram in zarr, shard by shard, resumable; used by CFR when weighted."""

from __future__ import annotations

import pytest
import torch

from tests.flows.conftest import CAPTIONS, make_config


def _cfg(tiny_model, store_root, captions_file, concepts=("cat",), prior=None, **over):
    return make_config(tiny_model, store_root, concepts=concepts,
                       prior={"captions": captions_file, "shard_size": 5, "batch_size": 4, **(prior or {})},
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


def test_exclude_erased_equals_the_gram_of_the_other_captions_and_shares_the_shards(
        tiny_model, store_root, captions_file, counting):
    from flows.prior import prior
    from mace_core import models, text_stats
    from tasks._cache import open_store
    from tasks.prior import load_count, load_gram

    store = open_store(store_root)
    pipe = models.load_pipeline(tiny_model)
    full, _ = prior(_cfg(tiny_model, store_root, captions_file))
    shard_calls = counting["prior_gram"]
    for concepts, named in ((("cat",), {"a cat sleeping on a sofa"}),
                            ((dict(name="dog", type="object", mapping="forest", synonyms=("Frog",)), "ship"),
                             {"a small dog running in a meadow", "a frog on a leaf", "a ship sailing at sunset"})):
        P, _ = prior(_cfg(tiny_model, store_root, captions_file, concepts=concepts, prior={"exclude_erased": True}))
        others = [c for c in CAPTIONS if c not in named]
        direct = text_stats.prior_gram(pipe, others, batch_size=4)
        torch.testing.assert_close(load_gram(store, P), direct.gram, rtol=1e-9, atol=1e-8)
        assert load_count(store, P) == direct.count < load_count(store, full)
    # only the named captions were encoded again (one call per erased set, plus the two direct Grams above)
    assert counting["prior_gram"] == shard_calls + 2 + 2
    assert len(store.ls("prior_shard")) == 3 and len(store.ls("prior")) == 3
