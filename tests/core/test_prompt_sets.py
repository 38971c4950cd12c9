"""Prompt sets: the shipped paper files load as they are (row counts, groups, concepts, seeds); any CSV/parquet/JSON
with a prompt column loads the same way; rows become paired, seeded evaluation items."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mace_core import prompt_sets as ps
from mace_core.concepts import Concept
from mace_core.config import EvaluationConfig


@pytest.mark.parametrize(
    ("name", "n_rows", "groups", "n_concepts"),
    [
        ("celebrity_1", 2750, {"erased": 250, "kept": 2500}, 101),
        ("celebrity_5", 2750, {"erased": 250, "kept": 2500}, 105),
        ("celebrity_10", 2750, {"erased": 250, "kept": 2500}, 110),
        ("celebrity_100", 5000, {"erased": 2500, "kept": 2500}, 200),
        ("art_100", 5000, {"erased": 2500, "kept": 2500}, 200),
        ("coco_30k", 30000, {"kept": 30000}, 0),
        ("i2p", 4703, {"erased": 4703}, 0),
    ],
)
def test_shipped_csv_files_load_with_expected_rows(name, n_rows, groups, n_concepts):
    rows = ps.load_prompt_file(name)
    assert len(rows) == n_rows
    assert dict(Counter(r.group for r in rows)) == groups
    assert len({r.concept for r in rows if r.concept}) == n_concepts
    assert all(r.seed is not None for r in rows)
    assert all(isinstance(r, ps.PromptRow) for r in rows)


def test_shipped_rows_are_typed_and_derived():
    celeb = ps.load_prompt_file("celebrity_1")
    assert celeb[0] == ps.PromptRow(prompt="A portrait of Melania Trump", concept="Melania Trump", seed=1,
                                    group="erased", concept_type="identity")
    assert {r.concept for r in celeb if r.group == "erased"} == {"Melania Trump"}
    art = ps.load_prompt_file("art_100")
    assert art[0].concept == "Brent Heighton" and art[0].concept_type == "style" and art[0].group == "erased"
    coco = ps.load_prompt_file(ps.PROMPTS_DIR / "coco_30k.csv")
    assert coco[0].case_number == 0 and coco[-1].case_number == 29999 and coco[0].seed == 41337
    i2p = ps.load_prompt_file("i2p")
    assert [r.case_number for r in i2p] == list(range(4703))
    assert i2p[1].categories == ("self-harm",) and i2p[0].categories == ("violence", "self-harm")
    assert i2p[0].guidance == 13.0 and i2p[0].width == 512 and i2p[0].seed > 2**31  # seeds kept as they are
    assert sum(r.prompt == "" for r in i2p) == 1  # the file's one empty prompt, kept


def test_objects_paraphrase_json():
    syn = ps.load_paraphrases("objects")
    assert len(syn) == 10 and syn["cat"] == ("feline", "kitty", "housecat")
    rows = ps.load_prompt_file("objects")
    assert len(rows) == 40
    assert rows[0] == ps.PromptRow(prompt="a photo of the airplane", concept="airplane", concept_type="object")
    assert rows[1].group == "synonym" and rows[1].phrase == "aircraft" and rows[1].concept == "airplane"


def test_shipped_files_are_small_and_attributed():
    files = [p for p in ps.PROMPTS_DIR.iterdir() if p.name != "README.md"]
    assert {p.name for p in files} == set(ps.BUILTIN_SETS.values())
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    readme = (ps.PROMPTS_DIR / "README.md").read_text()
    assert "Shilin Lu" in readme and "Schramowski" in readme and "COCO" in readme


def test_generic_csv_parquet_json(tmp_path):
    records = [{"prompt": "a cat", "concept": "cat", "group": "erased", "seed": 3},
               {"prompt": "a dog", "concept": "dog", "group": "kept", "seed": 4}]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(records))
    (tmp_path / "p.csv").write_text("prompt,concept,group,seed\na cat,cat,erased,3\na dog,dog,kept,4\n")
    expected = [ps.PromptRow("a cat", "cat", 3, "erased"), ps.PromptRow("a dog", "dog", 4, "kept")]
    for name in ("p.parquet", "p.json", "p.csv"):
        assert ps.load_prompt_file(tmp_path / name) == expected


def test_bad_files_fail_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file .* not found"):
        ps.load_prompt_file(tmp_path / "missing.csv")
    (tmp_path / "a.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        ps.load_prompt_file(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("prompt,type\nhello,maybe\n")
    with pytest.raises(ValueError, match="b.csv row 0: type='maybe' is not a group"):
        ps.load_prompt_file(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("prompt,evaluation_seed\nhello,x\n")
    with pytest.raises(ValueError, match="evaluation_seed='x' is not a number"):
        ps.load_prompt_file(tmp_path / "c.csv")


CAT = Concept(name="cat", type="object", mapping="animal")
DOG = Concept(name="dog", type="object", mapping="animal")


def test_eval_items_from_rows_groups_and_seeds():
    rows = ps.load_prompt_file("objects")
    items = ps.eval_items_from_rows(rows, erased=[CAT], kept=[DOG], seeds_per_prompt=2)
    assert Counter(i.group for i in items) == {"erased": 2, "kept": 2, "synonym": 6}
    assert {i.phrase for i in items if i.group == "synonym"} == {"feline", "kitty", "housecat"}
    # derived seeds depend on the prompt only: swapping erased and kept keeps each prompt's seeds
    swapped = ps.eval_items_from_rows(rows, erased=[DOG], kept=[CAT], seeds_per_prompt=2)
    pairs = {(i.prompt, i.seed) for i in items if i.group != "synonym"}
    assert pairs == {(i.prompt, i.seed) for i in swapped if i.group != "synonym"}
    # file seeds: one image per row, the file's seed
    celeb = ps.eval_items_from_rows(ps.load_prompt_file("celebrity_1"), seeds_per_prompt=8)
    assert len(celeb) == 2750 and celeb[0].seed == 1 and celeb[0].concept == "Melania Trump"
    i2p = ps.eval_items_from_rows(ps.load_prompt_file("i2p"))
    assert len(i2p) == 4703 and i2p[1].concept == "self-harm" and {i.group for i in i2p} == {"erased"}


def test_config_prompt_file_field():
    cfg = EvaluationConfig(model="m", prompt_file="celebrity_10")
    assert cfg.prompt_file == "celebrity_10" and not cfg.erased
    with pytest.raises(ValueError, match="no concepts"):
        EvaluationConfig(model="m")
