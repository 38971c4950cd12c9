"""Caption sources for the general prior P and prompts for the domain prior D (spec Stage C; bug 6.14).

The general prior is the Gram of the text embeddings of a large caption corpus (official: every caption of
COCO train2014 + val2014, ~617k). This module streams captions from any of:

- COCO ``captions_*.json``: ``{"annotations": [{"caption": ...}, ...]}``;
- CSV: a ``prompt`` or ``caption`` column (``prompt`` wins when both exist);
- parquet: the same columns, read in record batches (the shipped miniworld corpus is parquet);
- plain text (``.txt``): one caption per line.

Leakage (spec 6.14): the official COCO prior includes val2014, where the COCO-30k evaluation prompts come from.
``exclude`` removes captions whose normalised text (:func:`normalise_caption`) is in an exclusion set built with
:func:`load_exclusions` from evaluation files (e.g. ``coco_30k.csv``'s ``prompt`` column).

Blank captions are skipped (and counted in the log); anything else unexpected (missing file, unknown format,
malformed JSON, no caption column, a non-string caption, a file with no captions) is a one-line ValueError.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

CAPTION_COLUMNS: tuple[str, ...] = ("prompt", "caption")
FORMATS: dict[str, str] = {".json": "coco", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".txt": "text"}
# A retain entry with more words than this is a prompt, fewer is a name to fill into templates.
MAX_NAME_WORDS = 4

PathLike = str | Path


def normalise_caption(text: str) -> str:
    """Matching key for exclusion: NFKC, case-folded, whitespace collapsed, surrounding punctuation stripped.

    "A man riding a horse. " and "a man  riding a horse" give the same key.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(" .,;:!?\"'")


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"caption file {str(path)!r} has unknown extension {path.suffix!r}: use one of {', '.join(sorted(FORMATS))}"
        )
    return fmt


def _check_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"caption file {str(p)!r} does not exist: check prior.captions / prior.exclude")
    if p.stat().st_size == 0:
        raise ValueError(f"caption file {str(p)!r} is empty: point to a file with captions")
    return p


def _pick_column(columns: Sequence[str], path: Path) -> str:
    for name in CAPTION_COLUMNS:
        if name in columns:
            return name
    raise ValueError(
        f"caption file {str(path)!r} has no 'prompt' or 'caption' column (columns: {list(columns)[:10]}): "
        "rename the caption column"
    )


def _raw_captions(path: Path) -> Iterator[object]:
    """Every caption cell of one file, in file order (not yet type-checked)."""
    fmt = _format_of(path)
    if fmt == "coco":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"caption file {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                "pass a COCO captions_*.json"
            ) from None
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list):
            raise ValueError(
                f"caption file {str(path)!r} has no 'annotations' list: pass a COCO captions_*.json "
                "(or a csv/parquet/txt file)"
            )
        for i, ann in enumerate(annotations):
            if not isinstance(ann, dict) or "caption" not in ann:
                raise ValueError(f"caption file {str(path)!r}: annotations[{i}] has no 'caption' field")
            yield ann["caption"]
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            column = _pick_column(reader.fieldnames or [], path)
            for row in reader:
                yield row[column]
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError):
            raise ValueError(f"caption file {str(path)!r} is not a readable parquet file: check the file") from None
        column = _pick_column(pf.schema_arrow.names, path)
        for batch in pf.iter_batches(columns=[column], batch_size=8192):
            yield from batch.column(0).to_pylist()
    else:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\r\n")


def read_captions(
    source: PathLike | Sequence[PathLike],
    exclude: frozenset[str] | set[str] = frozenset(),
    max_captions: int | None = None,
) -> Iterator[str]:
    """Stream captions from one file or several (in order), minus excluded ones.

    Args:
        source: a caption file or a list of them (e.g. COCO train and val json).
        exclude: normalised captions to drop (:func:`load_exclusions`).
        max_captions: stop after this many yielded captions (``None`` = all).

    Yields:
        caption strings with whitespace collapsed.

    Raises:
        ValueError: (lazily, while iterating) a missing/empty/malformed file, a non-string caption, or a source
            that yields no caption at all.
    """
    paths = [source] if isinstance(source, (str, Path)) else list(source)
    if not paths:
        raise ValueError("caption source is empty: pass at least one caption file")
    if max_captions is not None and (not isinstance(max_captions, int) or max_captions < 1):
        raise ValueError(f"max_captions={max_captions!r}: expected a positive int or None")
    files = [_check_file(p) for p in paths]  # fail before the first caption, not midway
    for f in files:
        _format_of(f)
    return _iter_captions(files, exclude, max_captions)


def _iter_captions(files: list[Path], exclude: frozenset[str] | set[str], max_captions: int | None) -> Iterator[str]:
    n_yielded = n_blank = n_excluded = 0
    for path in files:
        for i, cell in enumerate(_raw_captions(path)):
            if cell is None:
                n_blank += 1
                continue
            if not isinstance(cell, str):
                raise ValueError(
                    f"caption file {str(path)!r}: caption {i} is {type(cell).__name__}, not text: fix the file"
                )
            text = " ".join(cell.split())
            if not text:
                n_blank += 1
                continue
            if exclude and normalise_caption(text) in exclude:
                n_excluded += 1
                continue
            yield text
            n_yielded += 1
            if max_captions is not None and n_yielded >= max_captions:
                logger.info("captions: stopped at max_captions=%d", max_captions)
                return
    logger.info("captions: %d read, %d excluded, %d blank skipped", n_yielded, n_excluded, n_blank)
    if n_yielded == 0:
        raise ValueError(
            f"caption source {[str(f) for f in files]} gave no captions ({n_excluded} excluded, {n_blank} blank): "
            "check the file contents and prior.exclude"
        )


def load_exclusions(paths: Iterable[PathLike]) -> frozenset[str]:
    """Normalised captions of evaluation files (any supported format), to pass as ``exclude``."""
    keys: set[str] = set()
    for p in paths:
        for caption in read_captions(p):
            keys.add(normalise_caption(caption))
    return frozenset(keys)


def source_digest(paths: PathLike | Sequence[PathLike], exclude: frozenset[str] | set[str] = frozenset()) -> str:
    """``"sha256:<hex>"`` of the caption files' bytes (in order) and the exclusion set: the prior's input digest.

    File names are not hashed (moving a file keeps its digest); content, order and exclusions are.
    """
    h = hashlib.sha256()
    for p in [paths] if isinstance(paths, (str, Path)) else list(paths):
        f = _check_file(p)
        h.update(f"file:{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    for key in sorted(exclude):
        h.update(b"exclude:" + key.encode("utf-8") + b"\n")
    return "sha256:" + h.hexdigest()


def naming(phrases: Iterable[str]) -> re.Pattern[str]:
    """A pattern that finds any of ``phrases`` as whole words, case-insensitively ("cat" in "A Cat's toy", not in
    "category"; spaces inside a phrase match any whitespace): which captions name an erased concept.

    Raises ValueError for no phrase or a blank one."""
    phrases = list(phrases)
    words = [p.split() for p in phrases]
    if not words or not all(words):
        raise ValueError(f"naming() needs non-blank phrases, got {phrases!r}")
    alternatives = sorted({r"\s+".join(map(re.escape, w)) for w in words}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def shards(captions: Iterable[str], shard_size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``shard_size`` captions (the last may be shorter): the prior's resume unit."""
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r}: expected a positive int, e.g. 5000")
    shard: list[str] = []
    for caption in captions:
        shard.append(caption)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


def domain_prompts(retain: Sequence[str], concept_type: str = "identity",
                   templates: Sequence[str] | None = None) -> list[str]:
    """Prompts for the domain prior D from a retain list (paper App. B: e.g. the kept celebrities or artists).

    An entry of at most :data:`MAX_NAME_WORDS` words is a *name* and is filled into every template of
    ``concept_type`` (``prompts.TEMPLATES``); a longer entry is a *prompt* and is kept as is. Order is kept and
    duplicates (case-insensitive) dropped.

    Args:
        retain: names ("tom hanks") and/or prompts ("a photo of a red car on a bridge").
        concept_type: template family for names: object | identity | style | explicit.
        templates: explicit templates with one ``{}`` (overrides ``concept_type``).
    """
    from mace_core.prompts import TEMPLATES

    if isinstance(retain, str):
        raise TypeError("retain must be a list of names/prompts, not one string")
    if not retain:
        raise ValueError("retain is empty: list the names or prompts to preserve (prior.retain)")
    if templates is None:
        if concept_type not in TEMPLATES:
            raise ValueError(f"concept_type {concept_type!r} is unknown: use one of {', '.join(TEMPLATES)}")
        templates = TEMPLATES[concept_type]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"template {bad[0]!r} must contain exactly one '{{}}' placeholder")
    out: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(retain):
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"retain[{i}]={entry!r} is not a non-empty string")
        text = " ".join(entry.split())
        words = len(re.findall(r"\S+", text))
        candidates = [t.format(text) for t in templates] if words <= MAX_NAME_WORDS else [text]
        for c in candidates:
            key = c.casefold()
            if key not in seen:
                seen.add(key)
                out.append(c)
    return out
