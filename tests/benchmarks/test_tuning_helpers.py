"""``benchmarks.tuning.merged``: how a variant is laid over a setting's shared sections."""

from benchmarks.tuning import merged, retained_split, setting


def test_a_variant_overrides_fields_and_keeps_the_rest():
    base = {"fusion": {"prior_weight": 0.001, "domain_weight": 3000.0}, "prior": {"retain": ["a"]}}
    out = merged(base, {"fusion": {"domain_weight": 50.0}})
    assert out == {"fusion": {"prior_weight": 0.001, "domain_weight": 50.0}, "prior": {"retain": ["a"]}}
    assert base["fusion"]["domain_weight"] == 3000.0  # the shared sections are not mutated


def test_prior_scale_multiplies_the_merged_fusion_prior_weight():
    base = {"fusion": {"prior_weight": 1e-5, "domain_weight": 3000.0}}
    out = merged(base, {"prior_scale": 4.0})
    assert "prior_scale" not in out and abs(out["fusion"]["prior_weight"] - 4e-5) < 1e-15
    assert out["fusion"]["domain_weight"] == 3000.0
    assert merged(base, {"prior_scale": 2.0, "fusion": {"prior_weight": 1e-3}})["fusion"]["prior_weight"] == 2e-3


def test_identities_count_setting_scales_the_prior_with_the_count():
    one, ten = setting("identities_count", 1), setting("identities_count", 10)
    (erased1, kept1, shared1), = one.cases
    (erased10, _, shared10), = ten.cases
    assert len(erased1) == 1 and len(erased10) == 10 and len(kept1) == 100
    assert not {c["name"] for c in erased10} & {c["name"] for c in kept1}
    assert abs(shared10["fusion"]["prior_weight"] - 10 * shared1["fusion"]["prior_weight"]) < 1e-12


def test_objects_screen_erases_each_listed_class_alone_and_keeps_the_other_nine():
    st = setting("objects", classes=("bird", "frog"))
    assert st.stem == "tuning_objects_bird_frog" and len(st.cases) == 2
    for (erased, kept, shared), name in zip(st.cases, ("bird", "frog"), strict=True):
        assert [c["name"] for c in erased] == [name] and len(kept) == 9
        assert name not in {c["name"] for c in kept} and shared["prior"]["retain"] == [c["name"] for c in kept]
    assert len(setting("objects").cases) == 10 and setting("objects").stem == "tuning_objects"


def test_styles_setting_erases_ten_styles_and_retains_the_other_ten():
    (erased, kept, shared), = setting("styles").cases
    assert len(erased) == len(kept) == 10 and not {c["name"] for c in erased} & {c["name"] for c in kept}
    assert all(c["type"] == "style" for c in erased + kept) and shared["prior"]["retain"] == [c["name"] for c in kept]


def test_identities_kept_setting_erases_the_hundred_and_keeps_and_retains_only_the_first_k():
    st = setting("identities_kept", 28)
    (erased, kept, shared), = st.cases
    assert len(erased) == 100 and len(kept) == 28 and st.stem == "tuning_identities_kept_28"
    assert not {c["name"] for c in erased} & {c["name"] for c in kept}
    assert shared["prior"]["retain"] == [c["name"] for c in kept] and st.preset == "identities"
    assert [c["name"] for c in setting("identities_kept", 100).cases[0][1]] == [
        c["name"] for c in setting("identities").cases[0][1]]


def test_identities_retained_setting_keeps_the_hundred_and_retains_only_the_first_k():
    st = setting("identities_retained", 28)
    (erased, kept, shared), = st.cases
    assert len(erased) == 100 and len(kept) == 100 and st.retained == 28 and st.preset == "identities"
    assert shared["prior"]["retain"] == [c["name"] for c in kept[:28]]
    # the same erase as identities_kept at the same K: the LoRAs and fusions are shared through the store
    assert shared == setting("identities_kept", 28).cases[0][2] and erased == setting("identities_kept", 28).cases[0][0]


def test_retained_split_means_each_group():
    per = {"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.25}
    assert retained_split(per, ["a", "b", "c", "d"], 2) == {"acc_s_retained": 75.0, "acc_s_unretained": 12.5}
    assert retained_split(per, ["a", "b"], 2) == {"acc_s_retained": 75.0, "acc_s_unretained": None}


def test_an_unknown_model_directory_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import sys

    import pytest

    from benchmarks.tuning import main

    monkeypatch.setattr(sys, "argv", ["tuning", "--suite", "identities_kept", "--count", "100",
                                      "--model", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "no model_index.json there" in capsys.readouterr().err


def test_a_holdout_index_outside_the_seeds_is_refused_before_any_work(monkeypatch, capsys):
    import sys

    import pytest

    from benchmarks.tuning import main

    monkeypatch.setattr(sys, "argv", ["tuning", "--suite", "identities_kept", "--count", "100", "--seeds", "4",
                                      "--holdout-from", "4"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "--holdout-from 4: give 1 to --seeds - 1 (3)" in capsys.readouterr().err
