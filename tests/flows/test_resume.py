"""A run killed during LoRA training resumes: finished artifacts reused, nothing partial read, same result."""

from __future__ import annotations

import pytest

from tests.flows.conftest import final_weights, make_config, same_weights


def test_killed_lora_run_resumes_to_the_same_model(tiny_model, store_root, tmp_path, monkeypatch):
    from flows.erase import erase
    from mace_core import lora
    from tasks._cache import open_store

    real = lora.train_concept_lora
    calls = {"n": 0}

    def second_one_dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed")
        return real(*a, **k)

    monkeypatch.setattr(lora, "train_concept_lora", second_one_dies)
    cfg = make_config(tiny_model, store_root)
    with pytest.raises(RuntimeError, match="worker killed"):
        erase(cfg)
    store = open_store(store_root)
    assert store.verify() == []  # no partial artifact, no orphaned staging
    assert len(store.ls("lora")) == 1 and store.ls("fusion") == []

    # resume: a transient failure is retried (retries=1), the finished LoRA is reused
    calls["n"] = 0
    flaky = {"left": 1}

    def flaky_once(*a, **k):
        calls["n"] += 1
        if flaky["left"]:
            flaky["left"] -= 1
            raise RuntimeError("transient")
        return real(*a, **k)

    monkeypatch.setattr(lora, "train_concept_lora", flaky_once)
    resumed = erase(cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"retries": 1})}))
    lora_row = resumed.row("lora")
    assert (lora_row.hits, lora_row.misses) == (1, 1)
    assert calls["n"] == 2  # one failed attempt + one successful retry, for the missing LoRA only
    assert resumed.row("images").misses == 0 and resumed.row("stats").misses == 0

    # equals an uninterrupted run in a fresh store
    monkeypatch.setattr(lora, "train_concept_lora", real)
    fresh = str(tmp_path / "fresh")
    clean = erase(make_config(tiny_model, fresh))
    assert same_weights(final_weights(store_root, resumed), final_weights(fresh, clean))


def test_bad_input_value_error_is_not_retried(tiny_model, store_root, monkeypatch):
    from flows.erase import erase
    from mace_core import lora

    calls = {"n": 0}

    def bad(*a, **k):
        calls["n"] += 1
        raise ValueError("bad data")

    monkeypatch.setattr(lora, "train_concept_lora", bad)
    cfg = make_config(tiny_model, store_root, concepts=("cat",), masks={"backend": "none"})
    cfg = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"retries": 2, "retry_delay_s": 0})})
    with pytest.raises(ValueError, match="bad data"):
        erase(cfg)
    assert calls["n"] == 1


def test_joint_mode_retrains_every_lora_when_the_set_grows(tiny_model, store_root, counting):
    """The official coupling, kept for reproduction: every LoRA trains on the set's CFR."""
    from flows.add import AddRequest, add
    from flows.erase import erase
    from mace_core.concepts import Concept

    cfg = make_config(tiny_model, store_root, concepts=("cat",), lora={"steps": 1, "base": "joint"},
                      masks={"backend": "none"})
    first = erase(cfg)
    assert first.row("lora").misses == 1 and first.row("cfr_concept").misses == 0
    grown = add(AddRequest(run=cfg.name, add=(Concept(name="dog", type="object", mapping="forest"),),
                           store=store_root))
    assert grown.row("lora").misses == 2  # cat's base M changed, so cat retrains too
    assert counting["train_concept_lora"] == 3
