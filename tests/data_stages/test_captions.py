"""Caption readers for the general prior, exclusion of evaluation prompts, digests, shards, domain prompts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mace_core import captions as cap
from mace_core.prompts import IDENTITY_TEMPLATES

CAPS = ["A man riding a horse.", "two  dogs on a beach", "a red bus"]


@pytest.fixture
def files(tmp_path):
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [],
                                "annotations": [{"id": i, "image_id": i, "caption": c} for i, c in enumerate(CAPS)]}))
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("case_number,prompt,evaluation_seed\n"
                        + "\n".join(f'{i},"{c}",1' for i, c in enumerate(CAPS)) + "\n")
    cap_csv = tmp_path / "caption.csv"
    cap_csv.write_text("caption\n" + "\n".join(CAPS) + "\n\n")
    pq_path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"caption": CAPS + [None], "seed": [1, 2, 3, 4]}), pq_path)
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(CAPS) + "\n\n   \n")
    return {"coco": coco, "csv": csv_path, "caption_csv": cap_csv, "parquet": pq_path, "text": txt}


@pytest.mark.parametrize("fmt", ["coco", "csv", "caption_csv", "parquet", "text"])
def test_each_format(files, fmt):
    assert list(cap.read_captions(files[fmt])) == ["A man riding a horse.", "two dogs on a beach", "a red bus"]


def test_several_files_and_cap(files):
    got = list(cap.read_captions([files["coco"], files["text"]], max_captions=4))
    assert got == ["A man riding a horse.", "two dogs on a beach", "a red bus", "A man riding a horse."]


def test_exclusion_by_normalised_text(files, tmp_path):
    eval_csv = tmp_path / "coco_30k.csv"
    eval_csv.write_text("case_number,prompt\n0,a man riding a horse\n1,A RED BUS .\n")
    exclude = cap.load_exclusions([eval_csv])
    assert exclude == {"a man riding a horse", "a red bus"}
    assert list(cap.read_captions(files["coco"], exclude=exclude)) == ["two dogs on a beach"]
    with pytest.raises(ValueError, match=r"gave no captions \(3 excluded, 2 blank"):
        list(cap.read_captions(files["text"], exclude=exclude | {"two dogs on a beach"}) )


def test_errors(tmp_path, files):
    with pytest.raises(ValueError, match="does not exist"):
        cap.read_captions(tmp_path / "missing.json")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        cap.read_captions(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="gave no captions"):
        list(cap.read_captions(tmp_path / "blank.txt"))
    (tmp_path / "bad.json").write_text('{"annotations": [')
    with pytest.raises(ValueError, match=r"not valid JSON \(line 1"):
        list(cap.read_captions(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="no 'annotations' list"):
        list(cap.read_captions(tmp_path / "other.json"))
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'prompt' or 'caption' column"):
        list(cap.read_captions(tmp_path / "cols.csv"))
    pq.write_table(pa.table({"caption": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match="caption 0 is int"):
        list(cap.read_captions(tmp_path / "ints.parquet"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable parquet"):
        list(cap.read_captions(tmp_path / "junk.parquet"))
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown extension"):
        cap.read_captions(tmp_path / "c.xlsx")
    for err in (ValueError,):
        with pytest.raises(err):
            cap.read_captions([])


def test_source_digest(files, tmp_path):
    d = cap.source_digest([files["coco"], files["text"]])
    assert d.startswith("sha256:") and d == cap.source_digest([files["coco"], files["text"]])
    assert d != cap.source_digest([files["text"], files["coco"]])
    assert d != cap.source_digest([files["coco"], files["text"]], exclude={"a red bus"})
    moved = tmp_path / "moved.txt"
    moved.write_bytes(files["text"].read_bytes())
    assert cap.source_digest(moved) == cap.source_digest(files["text"])


def test_shards():
    assert list(cap.shards(iter("abcde"), 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(cap.shards([], 3)) == []
    with pytest.raises(ValueError, match="shard_size"):
        list(cap.shards(["a"], 0))


def test_domain_prompts():
    out = cap.domain_prompts(["Tom Hanks", "a photo of a red car parked on a bridge", "tom hanks"])
    assert out[: len(IDENTITY_TEMPLATES)] == [t.format("Tom Hanks") for t in IDENTITY_TEMPLATES]
    assert out[-1] == "a photo of a red car parked on a bridge" and len(out) == len(IDENTITY_TEMPLATES) + 1
    assert cap.domain_prompts(["monet"], templates=["art by {}"]) == ["art by monet"]
    with pytest.raises(ValueError, match="retain is empty"):
        cap.domain_prompts([])
    with pytest.raises(ValueError, match="placeholder"):
        cap.domain_prompts(["x"], templates=["no slot"])


def test_miniworld_corpus_reads():
    from miniworld.paths import CAPTIONS_PATH

    first = list(cap.read_captions(CAPTIONS_PATH, max_captions=3))
    assert len(first) == 3 and all(isinstance(c, str) and c for c in first)


def test_naming_finds_whole_phrases_only():
    pattern = cap.naming(["cat", "Zorvath  Quell", "hart"])
    named = [c for c in ("A Cat's toy", "a category", "zorvath quell at dusk", "a portrait of Zorvath\tQuell",
                         "Zorvath Quellish", "a hart", "a heart", "cat") if pattern.search(c)]
    assert named == ["A Cat's toy", "zorvath quell at dusk", "a portrait of Zorvath\tQuell", "a hart", "cat"]
    with pytest.raises(ValueError, match="non-blank phrases"):
        cap.naming(["cat", "  "])
    with pytest.raises(ValueError, match="non-blank phrases"):
        cap.naming([])
