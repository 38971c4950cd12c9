"""CFIS (paper Eq. 5) density and sampling; per-concept seeds."""

from __future__ import annotations

import pytest
import torch

from mace_core.cfis import cfis_density, sample_timesteps
from mace_core.seeds import concept_seed


def test_density_shape_and_paper_numbers():
    p = cfis_density()
    assert p.shape == (1000,) and p.dtype == torch.float64
    assert abs(float(p.sum()) - 1.0) < 1e-12 and (p >= 0).all()
    assert 0.85 < float(p[200:401].sum()) < 0.87
    assert 0.98 < float(p[150:451].sum()) < 0.99
    mean = float((torch.arange(1000, dtype=torch.float64) * p).sum())
    assert abs(mean - 300.0) < 1.0
    assert 0.0048 < float(p.max()) < 0.0051
    # direct formula of Eq. 5
    t = torch.arange(1000, dtype=torch.float64)
    raw = 1 / (1 + torch.exp(-0.05 * (t - 200))) - 1 / (1 + torch.exp(-0.05 * (t - 400)))
    assert torch.allclose(p, raw / raw.sum(), rtol=1e-12, atol=1e-15)


def test_histogram_matches_density():
    g = torch.Generator().manual_seed(0)
    s = sample_timesteps(200_000, g)
    assert s.dtype == torch.long and int(s.min()) >= 0 and int(s.max()) < 1000
    hist = torch.bincount(s, minlength=1000).double() / s.numel()
    tv = 0.5 * float((hist - cfis_density()).abs().sum())
    assert tv < 0.02
    assert 0.85 < float(hist[200:401].sum()) < 0.87


def test_same_seed_same_samples_and_different_seed_differs():
    a = sample_timesteps(1000, torch.Generator().manual_seed(5))
    b = sample_timesteps(1000, torch.Generator().manual_seed(5))
    c = sample_timesteps(1000, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfis_bad_inputs():
    with pytest.raises(ValueError, match="t1=400, t2=200"):
        cfis_density(t1=400, t2=200)
    with pytest.raises(ValueError, match="gamma"):
        cfis_density(gamma=0.0)
    with pytest.raises(TypeError, match="torch.Generator"):
        sample_timesteps(3, 42)


def test_concept_seed_deterministic_order_free_63_bit():
    names = ["melania trump", "van gogh", "cat", "nudity"]
    seeds = {n: concept_seed(2024, n) for n in names}
    assert {n: concept_seed(2024, n) for n in reversed(names)} == seeds
    assert len(set(seeds.values())) == len(names)
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert concept_seed(2024, "Van  Gogh") == seeds["van gogh"]
    assert concept_seed(2025, "cat") != seeds["cat"]
    torch.Generator().manual_seed(seeds["cat"])  # accepted by torch
    with pytest.raises(ValueError, match="global_seed"):
        concept_seed(-1, "cat")
    with pytest.raises(ValueError, match="concept_name"):
        concept_seed(1, "  ")
