"""Importer of the official cache_*.pt priors: good file, tampered mat1, wrong shapes, unsafe pickles."""

from __future__ import annotations

import pytest
import torch

from mace_core.official_cache import check_official_cache, import_official_cache

D = 8
DIMS = [6, 10, 6, 10]  # d_l of four projections


def _w0() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"blocks.{i}.attn2.to_{'v' if i < 2 else 'k'}": torch.randn(dl, D, generator=g)
            for i, dl in enumerate(DIMS)}


def _cache(w0: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, D, generator=g, dtype=torch.float64)
    P = x.T @ x
    cache = {}
    for i, w in enumerate(w0.values()):
        cache[f"{i}_for_mat1"] = (w.double() @ P).float()  # official files are fp32
        cache[f"{i}_for_mat2"] = P.float()
    return cache, P


def test_good_cache(tmp_path):
    w0 = _w0()
    cache, P = _cache(w0)
    torch.save(cache, tmp_path / "cache.pt")
    got = import_official_cache(tmp_path / "cache.pt", w0)
    assert got.dtype == torch.float64 and got.shape == (D, D)
    torch.testing.assert_close(got, P.float().double())
    check = check_official_cache(tmp_path / "cache.pt", w0)
    assert check.n_layers == 4 and check.worst_rel_err < 1e-6


def test_tampered_mat1_names_worst_layer(tmp_path):
    w0 = _w0()
    cache, _ = _cache(w0)
    cache["2_for_mat1"] = cache["2_for_mat1"] * 1.05
    torch.save(cache, tmp_path / "cache.pt")
    with pytest.raises(ValueError,
                       match=r"mat1 != W0·mat2 \(worst layer blocks\.2\.attn2\.to_k, relative error 4\.76e-02"):
        import_official_cache(tmp_path / "cache.pt", w0)
    other = {k: v + 0.1 for k, v in w0.items()}  # weights of another model
    cache, _ = _cache(w0)
    torch.save(cache, tmp_path / "cache2.pt")
    with pytest.raises(ValueError, match="made with other base weights"):
        import_official_cache(tmp_path / "cache2.pt", other)


def test_wrong_shapes_and_keys(tmp_path):
    w0 = _w0()
    cache, _ = _cache(w0)
    bad = dict(cache, **{"1_for_mat1": torch.zeros(7, D)})
    torch.save(bad, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"layer 1 .* do not fit W0 \(10, 8\)"):
        import_official_cache(tmp_path / "a.pt", w0)
    missing = {k: v for k, v in cache.items() if k != "3_for_mat2"}
    torch.save(missing, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="expected mat1 and mat2 for 0..3"):
        import_official_cache(tmp_path / "b.pt", w0)
    torch.save(dict(cache, extra=torch.zeros(1, 1)), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="unexpected key 'extra'"):
        import_official_cache(tmp_path / "c.pt", w0)
    torch.save(dict(cache, **{"1_for_mat2": cache["1_for_mat2"] * 2}), tmp_path / "d.pt")
    with pytest.raises(ValueError, match="mat2 of layer 1 .* differs from layer 0"):
        import_official_cache(tmp_path / "d.pt", w0)
    torch.save(cache, tmp_path / "e.pt")
    with pytest.raises(ValueError, match="expected mat1 and mat2 for 0..2"):
        import_official_cache(tmp_path / "e.pt", dict(list(w0.items())[:3]))


class Payload:  # a non-tensor object: needs unsafe unpickling
    pass


def test_unsafe_pickle_refused(tmp_path):
    w0 = _w0()
    cache, _ = _cache(w0)
    torch.save(dict(cache, meta=Payload()), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="needs unsafe unpickling .* refusing"):
        import_official_cache(tmp_path / "evil.pt", w0)
    with pytest.raises(ValueError, match="does not exist"):
        import_official_cache(tmp_path / "none.pt", w0)
