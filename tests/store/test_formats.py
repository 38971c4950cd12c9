"""Format helpers round-trip exactly: safetensors, zarr (float64 bits), parquet, PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tasks.formats import (load_arrays_zarr, load_png, load_table, load_tensors, load_tensors_metadata,
                           save_arrays_zarr, save_png, save_table, save_tensors)
from tasks.store import StoreError


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def test_safetensors_round_trip_exact(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g, dtype=torch.float64)
    tensors = {"w64": base, "w32": torch.randn(3, 7, generator=g), "half": torch.randn(4, generator=g).half(),
               "view": base[:, 1:3], "same": base, "i": torch.arange(5)}  # non-contiguous and shared
    save_tensors(tmp_path / "t.safetensors", tensors, metadata={"format": "pt", "rank": "4"})
    back = load_tensors(tmp_path / "t.safetensors")
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    assert load_tensors_metadata(tmp_path / "t.safetensors") == {"format": "pt", "rank": "4"}
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temp file left


def test_safetensors_rejects_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        save_tensors(tmp_path / "t.safetensors", {"x": np.zeros(3)})  # type: ignore[dict-item]
    assert not list(tmp_path.iterdir())


def test_zarr_float64_bit_exact_with_attrs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gram = rng.standard_normal((37, 29))
    gram[0, :4] = [-0.0, np.nan, np.inf, 5e-324]  # sign of zero, NaN, inf, subnormal
    arrays = {"gram": gram, "zeros": np.zeros((8, 8)), "count": np.array(12345, dtype=np.int64),
              "t": torch.arange(6, dtype=torch.float64).reshape(2, 3), "mask": np.array([True, False])}
    save_arrays_zarr(tmp_path / "s.zarr", arrays, attrs={"n_tokens": 7, "note": "ok"}, chunks=(16, 16))
    back, attrs = load_arrays_zarr(tmp_path / "s.zarr")
    assert attrs == {"n_tokens": 7, "note": "ok"}
    for name, a in arrays.items():
        a = np.asarray(a)
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        assert np.array_equal(_bits(back[name]), _bits(a)), name
    assert load_arrays_zarr(tmp_path / "s.zarr")["gram"].shape == (37, 29)  # name shortcut


def test_zarr_overwrite_replaces_whole_group(tmp_path: Path) -> None:
    save_arrays_zarr(tmp_path / "s.zarr", {"a": np.ones(3), "b": np.ones(2)})
    save_arrays_zarr(tmp_path / "s.zarr", {"a": np.zeros(3)})
    arrays, _ = load_arrays_zarr(tmp_path / "s.zarr")
    assert set(arrays) == {"a"} and not arrays["a"].any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "concept name"])
def test_zarr_rejects_unsafe_array_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="array name"):
        save_arrays_zarr(tmp_path / "s.zarr", {name: np.ones(2)})
    assert not list(tmp_path.iterdir())


def test_zarr_rejects_nan_attrs(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="finite"):
        save_arrays_zarr(tmp_path / "s.zarr", {"a": np.ones(2)}, attrs={"x": float("nan")})


def test_parquet_round_trip_rows_columns_and_table(tmp_path: Path) -> None:
    rows = [{"erased": "a photo of a cat", "mapping": "a photo of a", "target": "cat", "n": 1, "w": 0.5},
            {"erased": "ünïcödé \u202e", "mapping": "", "target": "x", "n": -3, "w": None}]
    save_table(tmp_path / "rows.parquet", rows)
    back = load_table(tmp_path / "rows.parquet")
    assert back == rows and isinstance(back, list)
    assert back.to_pydict()["n"] == [1, -3]
    save_table(tmp_path / "cols.parquet", {"caption": ["a", "b"]})
    assert load_table(tmp_path / "cols.parquet") == [{"caption": "a"}, {"caption": "b"}]
    save_table(tmp_path / "tab.parquet", pa.table({"x": [1.5, 2.5]}))
    assert load_table(tmp_path / "tab.parquet") == [{"x": 1.5}, {"x": 2.5}]


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_png_round_trip_arrays(tmp_path: Path, shape: tuple[int, ...]) -> None:
    arr = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    save_png(tmp_path / "a.png", arr)
    assert np.array_equal(np.asarray(load_png(tmp_path / "a.png")), arr)


def test_png_masks_and_pil(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    save_png(tmp_path / "m.png", mask)
    assert np.array_equal(np.asarray(load_png(tmp_path / "m.png")), mask.astype(np.uint8) * 255)
    img = Image.new("RGB", (3, 2), (10, 20, 30))
    save_png(tmp_path / "i.png", img)
    back = load_png(tmp_path / "i.png")
    assert back.mode == "RGB" and back.getpixel((2, 1)) == (10, 20, 30)


def test_png_rejects_float_arrays(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        save_png(tmp_path / "f.png", np.zeros((2, 2), dtype=np.float32))
    assert not list(tmp_path.iterdir())
