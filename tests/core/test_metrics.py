"""Metrics: harmonic means match the paper's formulas; Fréchet distance matches a direct formula."""

import numpy as np
import pytest
import torch

from mace_core import metrics


def test_harmonic_objects_formula_and_extremes():
    e, s, g = 0.1, 0.8, 0.2
    assert metrics.harmonic_objects(e, s, g) == pytest.approx(3 / (1 / 0.9 + 1 / 0.8 + 1 / 0.8))
    assert metrics.harmonic_objects(0.0, 1.0, 0.0) == pytest.approx(1.0)
    assert metrics.harmonic_objects(1.0, 1.0, 0.0) == 0.0  # nothing erased -> worst


def test_harmonic_celebrities_and_monotone():
    assert metrics.harmonic_celebrities(0.04, 0.9) == pytest.approx(2 / (1 / 0.96 + 1 / 0.9))
    assert metrics.harmonic_celebrities(0.1, 0.9) > metrics.harmonic_celebrities(0.2, 0.9)
    assert metrics.harmonic_celebrities(0.1, 0.9) > metrics.harmonic_celebrities(0.1, 0.8)


def test_fraction_validation():
    with pytest.raises(ValueError, match="fraction"):
        metrics.harmonic_celebrities(4.0, 90.0)


def test_frechet_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 6)), rng.normal(loc=0.5, scale=1.3, size=(250, 6))
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr sqrt(S_a S_b) = sum of square roots of the (real, non-negative) eigenvalues of S_a S_b.
    tr_cross = np.sqrt(np.clip(np.linalg.eigvals(s_a @ s_b).real, 0, None)).sum()
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross
    assert metrics.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_fewer_samples_than_features_matches_full_formula():
    """The low-rank path (n < F, e.g. a few 2048-d Inception features) equals the F x F formula."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 40)), rng.normal(loc=0.3, scale=1.5, size=(9, 40))
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = metrics._sqrtm_psd(s_a)
    tr_cross = np.trace(metrics._sqrtm_psd(root_a @ s_b @ root_a))
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_cross
    assert metrics.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert metrics.frechet_distance(b, a) == pytest.approx(ref, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_top1_and_clip_score():
    assert metrics.top1_accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)
    x = torch.randn(4, 8)
    assert torch.allclose(metrics.clip_score(x, x), torch.full((4,), 100.0, dtype=torch.float64))
