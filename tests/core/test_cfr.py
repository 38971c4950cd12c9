"""CFR (spec Stage E): factorised closed form == direct least squares == official per-layer formulation."""

from __future__ import annotations

import pytest
import torch

from mace_core import cfr
from tests.core._problem import D, make_concept, make_weights
from tests.helpers.asserts import assert_close, rel_err
from tests.helpers.official import lstsq_cfr, official_cfr


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    concepts = [make_concept(gen) for _ in range(3)]
    W0 = make_weights(gen)
    prior_tokens = torch.randn(40, D, generator=gen, dtype=torch.float64)
    domain_tokens = torch.randn(25, D, generator=gen, dtype=torch.float64)
    return concepts, W0, prior_tokens, domain_tokens


def _tokens(concepts):
    xs, ys = [], []
    for c in concepts:
        x, y = c.matched_tokens()
        xs += x
        ys += y
    return xs, ys


@pytest.mark.parametrize("lam,w,pw", [(0.5, 0.0, 0.0), (0.0, 0.3, 0.0), (0.0, 0.3, 2.0), (1.5, 0.2, 0.5)])
def test_cfr_equals_direct_least_squares(problem, lam, w, pw):
    concepts, W0, Pt, Dt = problem
    stats = sum(c.stats for c in concepts)
    K = cfr.prior_term(Pt.T @ Pt, Dt.T @ Dt, w, pw)
    M = cfr.cfr_remap(stats.A, stats.B, K, lam)
    W = cfr.refine_weights(W0, M)
    xs, ys = _tokens(concepts)
    ref = lstsq_cfr(W0, xs, ys, lam, Pt, w, Dt, pw)
    for n in W0:
        assert rel_err(W[n], ref[n]) < 1e-6, n


def test_cfr_no_prior_no_lambda_full_rank_equals_least_squares(problem):
    concepts, W0, _, _ = problem
    stats = sum(c.stats for c in concepts)
    M = cfr.cfr_remap(stats.A, stats.B, None, 0.0)
    xs, ys = _tokens(concepts)
    ref = lstsq_cfr(W0, xs, ys, 0.0)
    for n in W0:
        assert rel_err(W0[n] @ M, ref[n]) < 1e-6


@pytest.mark.parametrize("square", [True, False])
def test_cfr_equals_official_per_layer(problem, square):
    concepts, W0, Pt, Dt = problem
    P, Dg = Pt.T @ Pt, Dt.T @ Dt
    tps, pw, lam = 0.4, 3.0, 0.25
    stats = sum(c.stats for c in concepts)
    M = cfr.cfr_remap(stats.A, stats.B, cfr.prior_term(P, Dg, tps, pw, square_weight=square), lam)
    W = cfr.refine_weights(W0, M)
    xs, ys = _tokens(concepts)
    ref = official_cfr(W0, xs, ys, lam, (P, Dg), tps, pw, square_weight=square)
    for n in W0:
        assert_close(W[n], ref[n], rtol=1e-8, atol=1e-10, msg=n)


def test_square_weight_is_the_official_double_scaling(problem):
    concepts, W0, Pt, _ = problem
    P = Pt.T @ Pt
    assert_close(cfr.prior_term(P, None, 0.1, 0.0, square_weight=True), 0.01 * P, rtol=1e-15)
    assert_close(cfr.prior_term(P, None, 0.1, 0.0), 0.1 * P, rtol=1e-15)
    assert cfr.prior_term(P, None, 0.0, 1.0) is None


def test_cfr_satisfies_normal_equations(problem):
    concepts, _, Pt, Dt = problem
    stats = sum(c.stats for c in concepts)
    K = cfr.prior_term(Pt.T @ Pt, Dt.T @ Dt, 0.2, 1.0)
    lam = 0.3
    M = cfr.cfr_remap(stats.A, stats.B, K, lam)
    eye = torch.eye(D, dtype=torch.float64)
    lhs = M @ (lam * eye + K + stats.B)
    rhs = lam * eye + K + stats.A
    assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_refine_weights_casts_once_and_does_not_mutate(problem):
    concepts, W0, _, _ = problem
    stats = sum(c.stats for c in concepts)
    M = cfr.cfr_remap(stats.A, stats.B, None, 1.0)
    W32 = {n: w.float() for n, w in W0.items()}
    before = {n: w.clone() for n, w in W32.items()}
    out = cfr.refine_weights(W32, M)
    for n in W32:
        assert out[n].dtype == torch.float32
        assert torch.equal(W32[n], before[n])
        # float64 product rounded once: equal to rounding the exact product
        assert torch.equal(out[n], (W32[n].double() @ M).float())


def test_incremental_add_concept_equals_full_solve(problem):
    concepts, W0, Pt, _ = problem
    K = cfr.prior_term(Pt.T @ Pt, None, 0.5, 0.0)
    running = concepts[0].stats + concepts[1].stats
    M_inc = cfr.cfr_remap((running + concepts[2].stats).A, (running + concepts[2].stats).B, K, 0.1)
    # full set from one concatenated embedding batch
    from mace_core.text_stats import concept_statistics

    full = concept_statistics(torch.cat([c.erased for c in concepts]), torch.cat([c.mapping for c in concepts]),
                              [m for c in concepts for m in c.matches])
    M_full = cfr.cfr_remap(full.A, full.B, K, 0.1)
    assert_close(M_inc, M_full, rtol=1e-10, atol=1e-12)


def test_singular_system_raises_with_fix():
    d = 6
    x = torch.randn(3, d, dtype=torch.float64)  # rank 3 < 6
    B = x.T @ x
    with pytest.raises(ValueError, match=r"singular.*cfr.lam > 0"):
        cfr.cfr_remap(B, B, None, 0.0)
    with pytest.raises(ValueError, match="singular"):
        cfr.cfr_remap(torch.zeros(d, d), torch.zeros(d, d), None, 0.0)
    # lam > 0 fixes it
    M = cfr.cfr_remap(B, B, None, 1e-3)
    assert torch.isfinite(M).all()


def test_non_finite_and_bad_inputs_raise():
    A = torch.eye(4, dtype=torch.float64)
    bad = A.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="B has non-finite"):
        cfr.cfr_remap(A, bad, None, 1.0)
    with pytest.raises(ValueError, match="A has shape"):
        cfr.cfr_remap(torch.zeros(4, 3), A, None, 1.0)
    with pytest.raises(ValueError, match="lam"):
        cfr.cfr_remap(A, A, None, -1.0)
    with pytest.raises(ValueError, match="no prior Gram"):
        cfr.prior_term(None, None, 0.1, 0.0)
    with pytest.raises(ValueError, match=r"W0\['x'\] has shape"):
        cfr.refine_weights({"x": torch.zeros(3, 5)}, A)


def test_float64_stability_ill_conditioned_grams():
    """Embeddings with singular values 1 .. 1e-6 (Gram condition 1e12): solve stays accurate in float64."""
    gen = torch.Generator().manual_seed(3)
    d, n = 16, 200
    U, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -6, d, dtype=torch.float64)
    X = U @ torch.diag(s) @ V.T  # erased tokens
    Y = X + 1e-3 * torch.randn(n, d, generator=gen, dtype=torch.float64)  # mapping tokens
    W0 = {"w": torch.randn(10, d, generator=gen, dtype=torch.float64)}
    A, B = Y.T @ X, X.T @ X
    lam = 1e-9
    M = cfr.cfr_remap(A, B, None, lam)
    eye = torch.eye(d, dtype=torch.float64)
    residual = M @ (lam * eye + B) - (lam * eye + A)
    assert float(residual.norm() / (lam * eye + A).norm()) < 1e-9
    ref = lstsq_cfr(W0, [X], [Y], lam)
    # the objective value (not the ill-determined weights) must match the direct solve
    def obj(W):
        return float(((X @ W.T - Y @ W0["w"].T) ** 2).sum() + lam * ((W - W0["w"]) ** 2).sum())
    assert abs(obj(W0["w"] @ M) - obj(ref["w"])) <= 1e-8 * obj(ref["w"])
