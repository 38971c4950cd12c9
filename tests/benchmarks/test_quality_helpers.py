"""Helpers of the quality benchmark: the held-out specificity split and the prior scaling (benchmarks/quality.py)."""

import json

import pyarrow as pa

from benchmarks.quality import split_heldout


def _table(subjects: list[list[list]], styles: list[str | None] | None = None) -> pa.Table:
    return pa.table({"caption": [f"c{i}" for i in range(len(subjects))],
                     "subjects": [json.dumps(s) for s in subjects],
                     "style": styles or [None] * len(subjects)})


def test_split_separates_captions_by_erased_subject_and_keeps_order():
    subjects = [[["object", "cat", "red"]], [["object", "ship", None]], [["identity", "Zorvath Crane", None]],
                [["object", "dog", None], ["object", "cat", None]], [["object", "truck", "blue"]]]
    parts = split_heldout(_table(subjects), ["cat"], n=10)
    assert parts["unrelated"].column("caption").to_pylist() == ["c1", "c2", "c4"]
    assert parts["erased"].column("caption").to_pylist() == ["c0", "c3"]


def test_split_counts_a_caption_in_an_erased_style_as_naming_it():
    subjects = [[["object", "ship", None]]] * 3
    parts = split_heldout(_table(subjects, ["Ydra Pellucid", None, "Other Style"]), ["Ydra Pellucid"], n=10)
    assert parts["unrelated"].column("caption").to_pylist() == ["c1", "c2"]
    assert parts["erased"].column("caption").to_pylist() == ["c0"]


def test_split_takes_at_most_n_of_each():
    subjects = [[["object", "cat", None]]] * 5 + [[["object", "ship", None]]] * 5
    parts = split_heldout(_table(subjects), ["cat"], n=3)
    assert parts["unrelated"].num_rows == 3 and parts["erased"].num_rows == 3


def test_real_heldout_set_has_both_parts_for_the_ablation_classes():
    import pyarrow.parquet as pq

    from miniworld.paths import HELDOUT_CAPTIONS_PATH
    from miniworld.world import OBJECT_CLASSES

    erased = list(OBJECT_CLASSES[:5])
    parts = split_heldout(pq.read_table(HELDOUT_CAPTIONS_PATH), erased, n=200)
    assert parts["unrelated"].num_rows == 200 and parts["erased"].num_rows == 200
    for caption_subjects in parts["unrelated"].column("subjects").to_pylist():
        assert not {s[1] for s in json.loads(caption_subjects)} & set(erased)


def test_real_heldout_set_has_both_parts_for_the_styles_suite():
    import pyarrow.parquet as pq

    from miniworld.paths import HELDOUT_CAPTIONS_PATH
    from miniworld.world import STYLES

    erased = list(STYLES[:10])
    parts = split_heldout(pq.read_table(HELDOUT_CAPTIONS_PATH), erased, n=200)
    assert parts["unrelated"].num_rows == 200 and parts["erased"].num_rows == 200
    assert not set(parts["unrelated"].column("style").to_pylist()) & set(erased)
    assert set(parts["erased"].column("style").to_pylist()) <= set(erased)


def test_prior_weight_scales_with_the_number_erased():
    from benchmarks.quality import PRESETS, scaled_prior_weight
    from mace_cli.config_io import read_mapping

    tuned = float(read_mapping(PRESETS / "miniworld-objects.yaml")["fusion"]["prior_weight"])
    assert scaled_prior_weight("objects", 1, tuned_at=1) == tuned
    assert abs(scaled_prior_weight("objects", 5, tuned_at=1) - 5 * tuned) < 1e-12
    at_10, at_100 = (scaled_prior_weight("identities", n, tuned_at=100) for n in (10, 100))
    assert abs(at_10 * 10 - at_100) < 1e-12


def test_identity_overlap_groups_share_exactly_the_named_part():
    from benchmarks.quality import identity_overlap_split
    from miniworld.world import IDENTITIES

    split = identity_overlap_split()
    assert {k: len(v) for k, v in split.items()} == {"erased": 48, "no shared part": 52, "same first name": 48,
                                                     "same last name": 52}
    assert sorted(n for names in split.values() for n in names) == sorted(IDENTITIES)
    firsts = {n.split()[0] for n in split["erased"]}
    lasts = {n.split()[1] for n in split["erased"]}
    expected = {"no shared part": (False, False), "same first name": (True, False), "same last name": (False, True)}
    for group, (first, last) in expected.items():
        for name in split[group]:
            assert (name.split()[0] in firsts, name.split()[1] in lasts) == (first, last), (group, name)


def test_make_config_points_at_the_subject_model_and_merges_its_variant_last(tmp_path):
    from benchmarks.quality import Subject, make_config, object_concept

    cat = [object_concept("cat")]
    shipped = make_config("identities", "q-x", cat, str(tmp_path), fusion={"prior_weight": 0.5})
    other = make_config("identities", "q-x", cat, str(tmp_path), Subject("some/pipeline"), fusion={"prior_weight": 0.5})
    assert shipped.model.path == "miniworld" and other.model.path == "some/pipeline"
    assert other.model_copy(update={"model": shipped.model}) == shipped
    tuned = make_config("identities", "q-x", cat, str(tmp_path), Subject(variant={"fusion": {"domain_weight": 8000}}),
                        fusion={"prior_weight": 0.5})
    # the variant changes its field and keeps the suite's scaled prior weight and the preset's other fields
    assert tuned.fusion.domain_weight == 8000 and tuned.fusion.prior_weight == 0.5
    assert tuned.model_copy(update={"fusion": shipped.fusion}) == shipped


def test_quality_refuses_an_unknown_model_directory_before_any_work(tmp_path, monkeypatch, capsys):
    import sys

    import pytest

    from benchmarks.quality import main

    monkeypatch.setattr(sys, "argv", ["quality", "--suites", "identities", "--model", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "no model_index.json there" in capsys.readouterr().err


def test_quality_refuses_a_variant_that_is_not_config_sections(monkeypatch, capsys):
    import sys

    import pytest

    from benchmarks.quality import main

    for bad, said in (("{fusion: 1}", "is not JSON"), ('{"fusion": 8000}', "give config sections")):
        monkeypatch.setattr(sys, "argv", ["quality", "--suites", "identities", "--variant", bad])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2 and said in capsys.readouterr().err


def test_every_suite_erases_from_the_subject_model_with_its_variant(tmp_path, monkeypatch):
    import pytest

    from benchmarks import quality

    class Erased(Exception):
        def __init__(self, cfg):
            self.cfg = cfg

    def stop(cfg):
        raise Erased(cfg)

    monkeypatch.setattr(quality, "erase", stop)
    subject = quality.Subject("some/pipeline", {"lora": {"steps": 7}})
    store = str(tmp_path)
    runs = {"objects": lambda: quality.suite_objects(store, 1, 10, subject),
            "ablation": lambda: quality.suite_ablation(store, 1, subject),
            "identities": lambda: quality.suite_identities(store, 1, [1], subject),
            "identity_overlap": lambda: quality.suite_identity_overlap(store, 1, [1], subject),
            "styles": lambda: quality.suite_styles(store, 1, 10, (10,), subject)}
    assert set(runs) | {"heldout"} == set(quality.SUITES)
    for suite, run in runs.items():
        with pytest.raises(Erased) as first:
            run()
        assert first.value.cfg.model.path == "some/pipeline" and first.value.cfg.lora.steps == 7, suite
