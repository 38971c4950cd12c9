"""Evaluation prompt sets as files: the paper's CSV/JSON sets load as they are, and any CSV/parquet/JSON with a
``prompt`` column works the same way.

A file becomes a list of typed :class:`PromptRow` (prompt, concept, seed, group, case number, ...), read from the
columns the file has:

- ``prompt`` (required); ``evaluation_seed`` / ``seed``; ``case_number``; ``evaluation_guidance``;
  ``sd_image_width`` / ``sd_image_height``; ``categories`` (I2P, comma-separated);
- concept: a ``concept`` / ``artist`` / ``celebrity`` / ``class`` column, else (in a file with a group column)
  parsed from the prompt with the paper's identity and style templates (``evaluation.DEFAULT_EVAL_TEMPLATES``:
  "A portrait of X" -> X);
- group: a ``group`` / ``type`` column (``erased`` or ``0`` -> erased; ``others`` / ``retained`` / ``kept`` or
  ``1`` -> kept; ``synonym``), else derived from the set: COCO captions (a ``coco_id`` column) are kept
  (specificity), I2P prompts (a ``categories`` column) are erased (what explicit-content erasure must remove).

The objects paraphrase JSON (``{class: [synonyms]}``) becomes one ``"a photo of the {class}"`` row per class and
one ``synonym`` row per paraphrase. :func:`eval_items_from_rows` turns rows into ``EvalItem`` for
``evaluation.evaluate``: a row with a seed is one image; a row without gets ``seeds_per_prompt`` derived seeds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mace_core.concepts import Concept
from mace_core.evaluation import DEFAULT_EVAL_TEMPLATES, EvalGroup, EvalItem, image_seed

#: The shipped copies of the paper's prompt files (``data/prompts/README.md`` gives their attribution).
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"

#: Short names of the shipped prompt files (usable wherever a prompt file path is expected).
BUILTIN_SETS: dict[str, str] = {
    "objects": "10_objects_paraphrase.json",
    "celebrity_1": "celebrity_1_concepts.csv",
    "celebrity_5": "celebrity_5_concepts.csv",
    "celebrity_10": "celebrity_10_concepts.csv",
    "celebrity_100": "celebrity_100_concepts.csv",
    "art_100": "art_100_concepts.csv",
    "coco_30k": "coco_30k.csv",
    "i2p": "I2P_prompts_4703.csv",
}

OBJECT_TEMPLATE = "a photo of the {}"

_CONCEPT_COLUMNS = ("concept", "artist", "celebrity", "class")
_COLUMN_TYPES = {"artist": "style", "celebrity": "identity", "class": "object"}
_SEED_COLUMNS = ("evaluation_seed", "seed")
_GROUP_COLUMNS = ("group", "type")
_GROUP_VALUES: dict[str, EvalGroup] = {
    "erased": "erased", "erase": "erased", "target": "erased", "0": "erased",
    "kept": "kept", "keep": "kept", "retained": "kept", "retain": "kept", "others": "kept", "other": "kept",
    "1": "kept",
    "synonym": "synonym", "synonyms": "synonym", "paraphrase": "synonym",
}


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a prompt file; fields the file does not have are None (``categories`` empty)."""

    prompt: str
    concept: str | None = None
    seed: int | None = None
    group: EvalGroup | None = None
    case_number: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    categories: tuple[str, ...] = ()
    phrase: str | None = None  # the phrase substituted in the prompt when it is not the concept (a synonym)
    concept_type: str | None = None  # object / identity / style when the file says so (column or template)


def resolve_prompt_file(name_or_path: str | Path) -> Path:
    """Path of a shipped set name (``BUILTIN_SETS``) or of an existing file; one-line error otherwise."""
    text = str(name_or_path)
    if text in BUILTIN_SETS:
        return PROMPTS_DIR / BUILTIN_SETS[text]
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file {text!r} not found: give a CSV/parquet/JSON path or one of {', '.join(BUILTIN_SETS)}"
        )
    return path


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (the content key of a prompt file or a weights file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _templates_re(templates: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile("^" + re.escape(t).replace(r"\{\}", "(.+)") + "$") for t in templates]


_CONCEPT_PATTERNS = [(kind, p) for kind in ("identity", "style") for p in _templates_re(DEFAULT_EVAL_TEMPLATES[kind])]


def concept_from_prompt(prompt: str) -> tuple[str, str] | None:
    """(X, type) of a paper identity/style template prompt ("A sketch of X" -> X, identity); else None."""
    for kind, pattern in _CONCEPT_PATTERNS:
        m = pattern.match(prompt.strip())
        if m:
            return m.group(1).strip(), kind
    return None


def _int(value: object, column: str, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column}={value!r} is not a number") from None
    if f != int(f):
        raise ValueError(f"{where}: {column}={value!r} is not an integer")
    return int(f)


def _float(value: object, column: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column}={value!r} is not a number") from None


def _first(record: dict, columns: Sequence[str]) -> tuple[str | None, object]:
    for c in columns:
        if c in record:
            return c, record[c]
    return None, None


def _row(record: dict, default_group: EvalGroup | None, where: str) -> PromptRow:
    if "prompt" not in record:
        raise ValueError(f"{where}: no 'prompt' column (columns: {', '.join(map(str, record))})")
    prompt = "" if record["prompt"] is None else str(record["prompt"])
    concept_col, concept = _first(record, _CONCEPT_COLUMNS)
    group_col, raw_group = _first(record, _GROUP_COLUMNS)
    parsed = concept_from_prompt(prompt) if group_col else None  # only in the paper's erased/kept sets
    if concept not in (None, ""):
        concept = str(concept).strip()
        kind = _COLUMN_TYPES.get(concept_col or "") or (parsed[1] if parsed and parsed[0] == concept else None)
    else:
        concept, kind = parsed if parsed else (None, None)
    group = default_group
    if raw_group not in (None, ""):
        key = str(raw_group).strip().casefold()
        if key not in _GROUP_VALUES:
            raise ValueError(f"{where}: {group_col}={raw_group!r} is not a group (erased/0, others/kept/1, synonym)")
        group = _GROUP_VALUES[key]
    seed_col, seed = _first(record, _SEED_COLUMNS)
    categories = record.get("categories")
    return PromptRow(
        prompt=prompt,
        concept=concept or None,
        seed=_int(seed, seed_col or "seed", where),
        group=group,
        case_number=_int(record.get("case_number"), "case_number", where),
        guidance=_float(record.get("evaluation_guidance"), "evaluation_guidance", where),
        width=_int(record.get("sd_image_width"), "sd_image_width", where),
        height=_int(record.get("sd_image_height"), "sd_image_height", where),
        categories=tuple(c.strip() for c in str(categories).split(",") if c.strip()) if categories else (),
        concept_type=kind,
    )


def _default_group(columns: Iterable[str]) -> EvalGroup | None:
    cols = set(columns)
    if "coco_id" in cols:
        return "kept"  # COCO captions: general generation quality that erasure must keep
    if "categories" in cols:
        return "erased"  # I2P: inappropriate prompts whose content erasure must remove
    return None


def _records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise ValueError(f"prompt file {str(path)!r}: unsupported format {suffix!r} (use .csv, .parquet, .json, .jsonl)")


def load_paraphrases(path: str | Path) -> dict[str, tuple[str, ...]]:
    """``{class: (synonym, ...)}`` of a paraphrase JSON such as ``10_objects_paraphrase.json``."""
    path = resolve_prompt_file(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ValueError(f"paraphrase file {str(path)!r} must map each class to a list of synonyms")
    return {str(k): tuple(v) for k, v in data.items()}


def load_prompt_file(name_or_path: str | Path, object_template: str = OBJECT_TEMPLATE) -> list[PromptRow]:
    """Typed rows of a prompt file (CSV, parquet, JSON rows / paraphrase map, JSONL), in file order.

    ``name_or_path`` is a path or a shipped set name (``BUILTIN_SETS``). A paraphrase map yields, per class,
    ``object_template`` of the class (no group: the evaluation decides erased or kept) and one ``synonym`` row
    per paraphrase.
    """
    path = resolve_prompt_file(name_or_path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            rows = []
            for cls, synonyms in load_paraphrases(path).items():
                rows.append(PromptRow(prompt=object_template.format(cls), concept=cls, concept_type="object"))
                rows += [PromptRow(prompt=object_template.format(s), concept=cls, group="synonym", phrase=s,
                                   concept_type="object") for s in synonyms]
            return rows
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"prompt file {str(path)!r}: JSON must be a list of row objects or a paraphrase map")
        records = data
    else:
        records = _records(path)
    if not records:
        raise ValueError(f"prompt file {str(path)!r} has no rows")
    default = _default_group(records[0])
    return [_row(r, default, f"{path.name} row {i}") for i, r in enumerate(records)]


def eval_items_from_rows(
    rows: Sequence[PromptRow],
    erased: Sequence[Concept] = (),
    kept: Sequence[Concept] = (),
    seeds_per_prompt: int = 1,
    base_seed: int = 0,
    with_synonyms: bool = True,
) -> list[EvalItem]:
    """``EvalItem`` for every row: the file's own seeds (one image per row) or ``seeds_per_prompt`` derived ones.

    Group: a row whose concept is one of ``erased`` / ``kept`` (case-insensitive) takes that group, except
    synonym rows, which are scored only for erased concepts (Acc_g); any other row keeps the file's group, and a
    row with no group at all (e.g. a paraphrase class the evaluation does not name) is skipped. Derived seeds are
    those of ``build_eval_items`` (they depend on the prompt text only, so before/after images pair up).
    """
    if seeds_per_prompt < 1:
        raise ValueError(f"seeds_per_prompt={seeds_per_prompt} must be >= 1")
    erased_keys = {c.key for c in erased}
    kept_keys = {c.key for c in kept}
    overlap = erased_keys & kept_keys
    if overlap:
        raise ValueError(f"concepts {sorted(overlap)} are both erased and kept: list each in one group")
    items: list[EvalItem] = []
    for row in rows:
        key = row.concept.casefold() if row.concept else None
        group: EvalGroup | None = row.group
        if row.group == "synonym":
            if not with_synonyms or (erased_keys and key not in erased_keys) or key in kept_keys:
                continue
        elif key in erased_keys:
            group = "erased"
        elif key in kept_keys:
            group = "kept"
        if group is None:
            continue
        concept = row.concept or ", ".join(row.categories)
        phrase = row.phrase or row.concept or ""
        if row.seed is not None:
            items.append(EvalItem(group, concept, phrase, row.prompt, row.seed))
            continue
        for i in range(seeds_per_prompt):
            items.append(EvalItem(group, concept, phrase, row.prompt, image_seed(base_seed, row.prompt, i)))
    return items
