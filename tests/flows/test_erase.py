"""The erase/add flows on a tiny SD1 pipeline: cache hits, incremental add/remove, determinism.

One scenario per module (cold runs are the expensive part): run {cat, dog}; rerun; add bird; remove dog;
and {bird, cat, dog} from scratch in a fresh store. Each test asserts one property of it.
"""

from __future__ import annotations

import time

import pytest

from tests.flows.conftest import final_weights, make_config, same_weights

COUNTED = ("generate_images", "train_concept_lora", "attention_masks", "concept_statistics_from_pipeline")


def _misses(report) -> dict[str, int]:
    return {r.stage: r.misses for r in report.stages if r.misses}


@pytest.fixture(scope="module")
def scenario(tiny_model, tmp_path_factory):
    """Runs the whole scenario once, recording reports, model-work call counts and timings."""
    from mace_core import generate, lora, masks, text_stats
    from flows.add import AddRequest, add
    from flows.erase import erase
    from mace_core.concepts import Concept

    calls: dict[str, int] = {}
    originals = {}
    for mod in (generate, lora, masks, text_stats):
        for name in COUNTED:
            if hasattr(mod, name):
                fn = getattr(mod, name)
                originals[(mod, name)] = fn

                def counted(*a, _fn=fn, _name=name, **k):
                    calls[_name] = calls.get(_name, 0) + 1
                    return _fn(*a, **k)

                setattr(mod, name, counted)
    from tasks import _cache

    loads_before = sum(1 for k in _cache.LOADS if k[0] == tiny_model)
    try:
        s1 = str(tmp_path_factory.mktemp("s1") / "store")
        s2 = str(tmp_path_factory.mktemp("s2") / "store")
        cfg = make_config(tiny_model, s1)
        out: dict = {"cfg": cfg, "s1": s1, "s2": s2}
        out["cold"] = erase(cfg)
        out["calls_cold"] = dict(calls)
        t0 = time.perf_counter()
        out["rerun"] = erase(cfg)
        out["rerun_s"] = time.perf_counter() - t0
        out["calls_rerun"] = dict(calls)
        out["w_catdog"] = final_weights(s1, out["cold"])
        bird = Concept(name="bird", type="object", mapping="forest")
        out["add"] = add(AddRequest(run=cfg.name, add=(bird,), store=s1))
        out["calls_add"] = dict(calls)
        out["w_add"] = final_weights(s1, out["add"])
        out["remove"] = add(AddRequest(run=cfg.name, remove=("dog",), store=s1, name="no-dog"))
        out["calls_remove"] = dict(calls)
        out["scratch"] = erase(make_config(tiny_model, s2, concepts=("bird", "cat", "dog")))
        out["w_scratch"] = final_weights(s2, out["scratch"])
        out["loads"] = sum(1 for k in _cache.LOADS if k[0] == tiny_model) - loads_before
        return out
    finally:
        for (mod, name), fn in originals.items():
            setattr(mod, name, fn)


def _delta(after: dict, before: dict) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in COUNTED if after.get(k, 0) != before.get(k, 0)}


def test_cold_run_computes_every_stage_once(scenario):
    r = scenario["cold"]
    assert r.hits == 0
    assert _misses(r) == {"prompts": 2, "images": 2, "masks": 2, "stats": 2, "cfr_concept": 2, "cfr": 1,
                          "lora": 2, "fusion": 1, "export": 1}
    assert scenario["calls_cold"]["train_concept_lora"] == 2


def test_second_run_is_all_hits_without_model_work(scenario):
    r = scenario["rerun"]
    assert r.misses == 0 and r.hits == scenario["cold"].misses
    assert _delta(scenario["calls_rerun"], scenario["calls_cold"]) == {}
    assert scenario["rerun_s"] <= 15.0, f"cache-hit rerun took {scenario['rerun_s']:.1f} s"
    assert r.refs == scenario["cold"].refs


def test_add_one_concept_computes_only_its_artifacts(scenario):
    r = scenario["add"]
    assert _misses(r) == {"prompts": 1, "images": 1, "masks": 1, "stats": 1, "cfr_concept": 1, "cfr": 1,
                          "lora": 1, "fusion": 1, "export": 1}
    assert _delta(scenario["calls_add"], scenario["calls_rerun"]) == {
        "generate_images": 1, "train_concept_lora": 1, "attention_masks": 1, "concept_statistics_from_pipeline": 1}
    for c in ("cat", "dog"):  # the existing concepts' artifacts are reused as they are
        for stage in ("images", "lora", "cfr_concept"):
            assert r.refs[f"{stage}/{c}"] == scenario["cold"].refs[f"{stage}/{c}"]


def test_add_equals_from_scratch_bitwise(scenario):
    assert same_weights(scenario["w_add"], scenario["w_scratch"])
    assert not same_weights(scenario["w_add"], scenario["w_catdog"])


def test_fresh_store_gives_identical_artifacts(scenario):
    # the {bird, cat, dog} run in a fresh store reproduced every per-concept artifact byte for byte
    add, scratch = scenario["add"].refs, scenario["scratch"].refs
    from tasks._cache import open_store

    s1, s2 = open_store(scenario["s1"]), open_store(scenario["s2"])
    for k in sorted(add, key=lambda k: k.startswith(("fusion", "cfr", "export"))):
        if k in ("export",):
            continue
        st1, key1 = add[k].split("/")
        st2, key2 = scratch[k].split("/")
        if key1 != key2:
            m1, m2 = s1.manifest(s1.get(st1, key1)), s2.manifest(s2.get(st2, key2))
            diff = {x: (m1["inputs"].get(x), m2["inputs"].get(x)) for x in set(m1["inputs"]) | set(m2["inputs"])
                    if m1["inputs"].get(x) != m2["inputs"].get(x)}
            raise AssertionError(f"{k}: inputs differ {diff}; config equal: {m1['config'] == m2['config']}"
                                 f" files {m1['files']} vs {m2['files']}")
        m1, m2 = s1.manifest(s1.get(st1, key1)), s2.manifest(s2.get(st2, key2))
        assert m1["files"] == m2["files"], (k, m1["files"], m2["files"])


def test_remove_resolves_without_training(scenario):
    r = scenario["remove"]
    assert _delta(scenario["calls_remove"], scenario["calls_add"]) == {}
    assert _misses(r) == {"cfr": 1, "fusion": 1, "export": 1}
    assert r.concepts == ["bird", "cat"]


def test_model_is_loaded_once_per_process(scenario):
    # five flow runs, ~40 model-using task bodies: at most one load (none if an earlier test loaded it)
    assert scenario["loads"] <= 1


def test_store_is_consistent_after_scenario(scenario):
    from tasks._cache import open_store

    assert open_store(scenario["s1"]).verify() == []
    assert open_store(scenario["s2"]).verify() == []
