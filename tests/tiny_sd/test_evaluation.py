"""The generation-based erasure protocol: items, pairing of seeds, aggregation into Acc_e/Acc_s/Acc_g."""

import pytest

from mace_core.concepts import Concept
from mace_core.evaluation import aggregate, build_eval_items, evaluate, rows_from_index

CAT = Concept(name="cat", type="object", mapping="forest", synonyms=("kitty",))
DOG = Concept(name="dog", type="object", mapping="sky")


def test_items_groups_and_paired_seeds():
    a = build_eval_items([CAT], [DOG], seeds_per_prompt=3)
    b = build_eval_items([DOG], [CAT], seeds_per_prompt=3)
    assert {i.group for i in a} == {"erased", "kept", "synonym"}
    assert sum(i.group == "synonym" for i in a) == 3
    seeds_a = {(i.prompt, i.seed) for i in a if i.group != "synonym"}
    seeds_b = {(i.prompt, i.seed) for i in b if i.group != "synonym"}
    assert seeds_a == seeds_b  # a prompt's seeds do not depend on the split
    with pytest.raises(ValueError, match="both erased and kept"):
        build_eval_items([CAT], [CAT], seeds_per_prompt=1)


def test_more_seeds_repeat_the_fewer_and_add_new_ones():
    four = build_eval_items([CAT], [DOG], seeds_per_prompt=4)
    eight = build_eval_items([CAT], [DOG], seeds_per_prompt=8)
    assert set(four) < set(eight) and len(set(eight) - set(four)) == len(four)


def test_rows_from_index_keep_only_the_later_seeds():
    items = build_eval_items([CAT], [DOG], seeds_per_prompt=8, with_synonyms=False)
    first_four = set(build_eval_items([CAT], [DOG], seeds_per_prompt=4, with_synonyms=False))
    # the recogniser finds the erased concept only on seeds 4-7, the kept one on seeds 0-3 and on one of 4-7
    later_kept = [i for i in items if i.group == "kept" and i not in first_four]
    rows = [{"group": i.group, "concept": i.concept, "prompt": i.prompt, "seed": i.seed,
             "correct": i not in first_four if i.group == "erased" else (i in first_four or i == later_kept[0])}
            for i in items]
    later = aggregate(rows_from_index(rows, 4, 8))
    assert later.accuracy == {"erased": 1.0, "kept": 0.25, "synonym": None} and len(later.rows) == len(rows) // 2
    assert aggregate(rows_from_index(rows, 6, 8)).accuracy["kept"] == 0.0  # later_kept[0] is seed index 4
    with pytest.raises(ValueError, match="first=8"):
        rows_from_index(rows, 8, 8)


def test_evaluate_aggregates_recogniser_verdicts(tiny_pipes):
    items = build_eval_items([CAT], [DOG], seeds_per_prompt=2)
    # A recogniser that "sees" only kept-concept prompts: Acc_e = Acc_g = 0, Acc_s = 1 -> H_o = 1.
    result = evaluate(tiny_pipes["sd1"], items, lambda imgs, its: [it.concept == "dog" for it in its],
                      steps=2, guidance_scale=1.0, batch_size=4)
    assert len(result.rows) == len(items)
    assert result.accuracy == {"erased": 0.0, "kept": 1.0, "synonym": 0.0}
    assert result.h_o == pytest.approx(1.0) and result.h_c == pytest.approx(1.0)
    assert result.per_concept["kept"] == {"dog": 1.0}
