"""File formats written inside artifact directories: safetensors, zarr groups, parquet tables and PNG.

Used inside :meth:`tasks.store.ArtifactStore.writer` directories and on ``store.path(ref)``. Each writer
fills a temporary sibling and renames it into place, so a crash never leaves a half-written file under the
final name. Heavy libraries are imported inside the functions: `mace artifacts ls` must not import torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from tasks.store import StoreError, is_safe_file_name, json_value, remove_entry, show_value

if TYPE_CHECKING:
    import numpy as np
    import pyarrow
    import torch
    from PIL import Image

__all__ = [
    "Rows",
    "ZarrContents",
    "load_arrays_zarr",
    "load_png",
    "load_table",
    "load_tensors",
    "load_tensors_metadata",
    "save_arrays_zarr",
    "save_png",
    "save_table",
    "save_tensors",
]


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path`` (file or directory)."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.old")
            os.rename(final, old)  # directories cannot be replaced in one rename
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        remove_entry(tmp)


def _to_numpy(value: Any, what: str) -> np.ndarray:
    import numpy as np

    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"{what}: object arrays cannot be stored; convert to a numeric or bool dtype")
    return arr


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (CPU copies; shared storage de-duplicated) to a safetensors file."""
    import torch
    from safetensors.torch import save_file

    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("save_tensors: metadata must map str -> str; json.dumps structured values first")
    seen: set[tuple[int, str]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_tensors: {name!r} is {type(t).__name__}, expected a torch.Tensor")
        t = t.detach().cpu().contiguous()
        ident = (t.untyped_storage().data_ptr(), str(t.device))
        if ident in seen and t.numel():
            t = t.clone()  # safetensors refuses tensors sharing storage
        seen.add(ident)
        out[name] = t
    with _atomic_target(path) as tmp:
        save_file(out, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU (no pickle: safe for untrusted files)."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def load_tensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The str -> str metadata stored by :func:`save_tensors`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


class ZarrContents:
    """What :func:`load_arrays_zarr` returns: unpacks as ``arrays, attrs`` (like a 2-tuple).

    ``contents["name"]`` is a shortcut for ``contents.arrays["name"]``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        self.arrays = arrays
        self.attrs = attrs

    def __iter__(self) -> Iterator[Any]:
        return iter((self.arrays, self.attrs))

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, item: str) -> np.ndarray: ...
    @overload
    def __getitem__(self, item: int) -> Any: ...
    def __getitem__(self, item: str | int) -> Any:
        if isinstance(item, str):
            return self.arrays[item]
        return (self.arrays, self.attrs)[item]

    def __repr__(self) -> str:
        return f"ZarrContents(arrays={sorted(self.arrays)}, attrs={self.attrs!r})"


def save_arrays_zarr(path: str | os.PathLike[str], arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
                     chunks: int | tuple[int, ...] | Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Write named arrays (numpy or CPU torch) as one zarr v3 group directory; dtypes and bits preserved.

    ``chunks``: an int (chunk edge for every dimension), a shape (used for arrays of that rank), a dict
    of shapes by array name, or None (zarr's automatic chunking). Empty chunks are written too, so -0.0
    and NaN payloads survive bit for bit.
    """
    import zarr

    attrs_j = json_value(dict(attrs or {}), "attrs")
    with _atomic_target(path) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        if attrs_j:
            group.attrs.update(attrs_j)
        for name, value in arrays.items():
            if not isinstance(name, str) or not is_safe_file_name(name):
                raise StoreError(f"array name {show_value(name)} is not allowed: use ASCII [A-Za-z0-9._-]")
            arr = _to_numpy(value, f"save_arrays_zarr[{name!r}]")
            shape_chunks = _chunk_shape(chunks, name, arr.shape)
            z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=shape_chunks,
                                   config={"write_empty_chunks": True})
            z[...] = arr


def _chunk_shape(chunks: Any, name: str, shape: tuple[int, ...]) -> Any:
    if isinstance(chunks, Mapping):
        chunks = chunks.get(name)
    if chunks is None or not shape:
        return "auto"
    if isinstance(chunks, int):
        return tuple(max(1, min(chunks, n)) for n in shape)
    return tuple(chunks) if len(chunks) == len(shape) else "auto"


def load_arrays_zarr(path: str | os.PathLike[str]) -> ZarrContents:
    """Read a group written by :func:`save_arrays_zarr`: ``(arrays by name, attrs)``."""
    import numpy as np
    import zarr

    group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    return ZarrContents(arrays, dict(group.attrs))


class Rows(list):  # type: ignore[type-arg]
    """A ``list[dict]`` of table rows that can also give columns (``to_pydict()``)."""

    def __init__(self, rows: Sequence[dict[str, Any]] = (), columns: Sequence[str] = ()) -> None:
        super().__init__(rows)
        self.column_names = list(columns)

    def to_pydict(self) -> dict[str, list[Any]]:
        """Columns as lists (the pyarrow ``Table.to_pydict`` shape)."""
        return {c: [row[c] for row in self] for c in self.column_names}


def save_table(path: str | os.PathLike[str],
               rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | pyarrow.Table) -> None:
    """Write a parquet table from rows (list of dicts), columns (dict of lists) or a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(rows, pa.Table):
        table = rows
    elif isinstance(rows, Mapping):
        table = pa.Table.from_pydict({k: list(v) for k, v in rows.items()})
    else:
        table = pa.Table.from_pylist([dict(r) for r in rows])
    with _atomic_target(path) as tmp:
        pq.write_table(table, str(tmp))


def load_table(path: str | os.PathLike[str]) -> Rows:
    """Read a parquet table as a list of row dicts (a :class:`Rows`, which also has ``to_pydict()``)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    return Rows(table.to_pylist(), table.column_names)


def save_png(path: str | os.PathLike[str], image: Image.Image | np.ndarray | torch.Tensor) -> None:
    """Write a PNG from a PIL image or a uint8 / bool (mask -> 0/255) array of shape HxW or HxWx{1,3,4}."""
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = _to_numpy(image, "save_png")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        if arr.dtype != np.uint8:
            raise TypeError(f"save_png: expected a uint8 or bool array, got {arr.dtype}; scale to 0..255 and "
                            "cast with .astype(np.uint8)")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise TypeError(f"save_png: expected shape HxW or HxWx{{1,3,4}}, got {arr.shape}")
        image = Image.fromarray(arr)
    with _atomic_target(path) as tmp:
        image.save(tmp, format="PNG")


def load_png(path: str | os.PathLike[str]) -> Image.Image:
    """Read a PNG fully into memory (the file is closed on return)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "PNG":
            raise ValueError(f"load_png: {str(path)!r} is {im.format}, not PNG")
        im.load()
        return im.copy()
