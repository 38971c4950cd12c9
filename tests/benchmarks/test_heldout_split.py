"""The held-out specificity set must not contain the erased concepts (benchmarks/quality.py split_heldout)."""

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
