"""Caption corpora (parquet) and their rendered images, regenerable deterministically.

A corpus row holds a caption and the full `SceneSpec` it describes, so its image can always be
re-rendered. Row ``i`` of a corpus built with ``base_seed`` uses scene seed ``base_seed + i``.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from miniworld.captions import caption, sample_spec
from miniworld.render import SceneSpec, Subject, render

CORPUS_SIZE = 200_000
CORPUS_SEED = 0
HELDOUT_SIZE = 5_000
HELDOUT_SEED = 10_000_000


def build_corpus(n: int, base_seed: int) -> pa.Table:
    """``n`` (caption, spec) rows; row i is drawn from ``numpy.random.default_rng(base_seed + i)``."""
    rows: dict[str, list] = {"caption": [], "seed": [], "subjects": [], "scene": [], "style": []}
    for i in range(n):
        seed = base_seed + i
        rng = np.random.default_rng(seed)
        spec = sample_spec(rng, seed)
        rows["caption"].append(caption(spec, rng))
        rows["seed"].append(seed)
        rows["subjects"].append(json.dumps([[s.kind, s.name, s.colour] for s in spec.subjects]))
        rows["scene"].append(spec.scene)
        rows["style"].append(spec.style)
    return pa.table(rows)


def spec_of(row: dict) -> SceneSpec:
    """The `SceneSpec` of a corpus row (a dict as from ``Table.to_pylist()``)."""
    subjects = tuple(Subject(kind, name, colour) for kind, name, colour in json.loads(row["subjects"]))
    return SceneSpec(subjects, row["scene"], row["style"], int(row["seed"]))


def ensure_corpus(path: Path, n: int, base_seed: int) -> pa.Table:
    """Read the corpus at ``path``, building and writing it first if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(build_corpus(n, base_seed), path, compression="zstd")
    return pq.read_table(path)


def _render_chunk(rows: list[dict]) -> np.ndarray:
    return np.stack([render(spec_of(r)).image for r in rows])


def render_table(table: pa.Table, workers: int = 1) -> np.ndarray:
    """Render every row of a corpus table: uint8[N, 32, 32, 3]."""
    rows = table.to_pylist()
    if workers <= 1:
        return _render_chunk(rows)
    chunks = [rows[i : i + 2000] for i in range(0, len(rows), 2000)]
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_render_chunk, chunks)))


def ensure_images(table: pa.Table, cache: Path, workers: int = 1) -> np.ndarray:
    """Rendered images of ``table``, cached as ``.npy`` at ``cache``."""
    if cache.exists():
        images = np.load(cache)
        if len(images) == table.num_rows:
            return images
    images = render_table(table, workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, images)
    return images
