"""Helpers of the quality benchmark: the held-out specificity split and the prior scaling (benchmarks/quality.py)."""

import json

import pyarrow as pa

from benchmarks.quality import split_heldout


def _table(subjects: list[list[list]]) -> pa.Table:
    return pa.table({"caption": [f"c{i}" for i in range(len(subjects))],
                     "subjects": [json.dumps(s) for s in subjects]})


def test_split_separates_captions_by_erased_subject_and_keeps_order():
    subjects = [[["object", "cat", "red"]], [["object", "ship", None]], [["identity", "Zorvath Crane", None]],
                [["object", "dog", None], ["object", "cat", None]], [["object", "truck", "blue"]]]
    parts = split_heldout(_table(subjects), ["cat"], n=10)
    assert parts["unrelated"].column("caption").to_pylist() == ["c1", "c2", "c4"]
    assert parts["erased"].column("caption").to_pylist() == ["c0", "c3"]


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


def test_prior_weight_scales_with_the_number_erased():
    from benchmarks.quality import PRESETS, scaled_prior_weight
    from mace_cli.config_io import read_mapping

    tuned = float(read_mapping(PRESETS / "miniworld-objects.yaml")["fusion"]["prior_weight"])
    assert scaled_prior_weight("objects", 1, tuned_at=1) == tuned
    assert abs(scaled_prior_weight("objects", 5, tuned_at=1) - 5 * tuned) < 1e-12
    assert abs(scaled_prior_weight("identities", 10, tuned_at=100) * 10 - scaled_prior_weight("identities", 100, tuned_at=100)) < 1e-12
