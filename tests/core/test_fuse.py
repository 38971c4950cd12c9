"""Fusion (spec Stage G / 3.2, paper Eq. 6-7): factorised == direct per-layer solve == official formulation."""

from __future__ import annotations

import pytest
import torch

from mace_core import cfr, fuse
from tests.core._problem import D, lora_delta, make_concept, make_lora, make_weights
from tests.helpers.asserts import assert_close, rel_err
from tests.helpers.official import lstsq_fusion, official_fusion


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(1)
    concepts = [make_concept(gen) for _ in range(3)]
    W0 = make_weights(gen)
    loras = [make_lora(gen, W0, rank=r, skip=skip) for r, skip in ((1, ()), (2, ("mid.attn2.to_k",)), (1, ()))]
    Pt = torch.randn(40, D, generator=gen, dtype=torch.float64)
    Dt = torch.randn(25, D, generator=gen, dtype=torch.float64)
    return concepts, W0, loras, Pt, Dt


def _joint_M(concepts, K, lam=0.2):
    stats = sum(c.stats for c in concepts)
    return cfr.cfr_remap(stats.A, stats.B, K, lam)


@pytest.mark.parametrize("lam,w,pw", [(0.3, 0.0, 0.0), (0.0, 0.2, 0.0), (0.0, 0.2, 4.0), (1.0, 0.1, 1.0)])
def test_joint_fusion_equals_least_squares_and_official(setup, lam, w, pw):
    concepts, W0, loras, Pt, Dt = setup
    P, Dg = Pt.T @ Pt, Dt.T @ Dt
    M = _joint_M(concepts, cfr.prior_term(P, Dg, 0.3, 1.0))
    W_cfr = cfr.refine_weights(W0, M)
    K = cfr.prior_term(P, Dg, w, pw)
    terms = [fuse.FusionTerm(M, c.stats.G, lo) for c, lo in zip(concepts, loras)]
    out = fuse.fuse_closed_form(W0, M, terms, K, lam)
    experts = [{n: W_cfr[n] + (lora_delta(lo, n) if n in lo.factors else 0) for n in W0} for lo in loras]
    tokens = [c.all_tokens() for c in concepts]
    ref = lstsq_fusion(W0, W_cfr, tokens, experts, lam, Pt, w, Dt, pw)
    deltas = [{n: lora_delta(lo, n) for n in lo.factors} for lo in loras]
    off = official_fusion(W0, W_cfr, tokens, deltas, lam, (P, Dg), w, pw)
    for n in W0:
        assert rel_err(out[n], ref[n]) < 1e-6, n
        assert_close(out[n], off[n], rtol=1e-8, atol=1e-10, msg=n)


def test_independent_bases_equal_least_squares(setup):
    concepts, W0, loras, Pt, _ = setup
    P = Pt.T @ Pt
    Kc = cfr.prior_term(P, None, 0.3, 0.0)
    Ms = [cfr.cfr_remap(c.stats.A, c.stats.B, Kc, 0.2) for c in concepts]  # CFR of each concept alone
    M = _joint_M(concepts, Kc)
    terms = [fuse.FusionTerm(Mk, c.stats.G, lo) for Mk, c, lo in zip(Ms, concepts, loras)]
    K = cfr.prior_term(P, None, 0.05, 0.0)
    out = fuse.fuse_closed_form(W0, M, terms, K, 0.4)
    experts = [{n: W0[n] @ Mk + (lora_delta(lo, n) if n in lo.factors else 0) for n in W0}
               for Mk, lo in zip(Ms, loras)]
    ref = lstsq_fusion(W0, cfr.refine_weights(W0, M), [c.all_tokens() for c in concepts], experts, 0.4, Pt, 0.05)
    for n in W0:
        assert rel_err(out[n], ref[n]) < 1e-6, n


def test_concept_tokens_only_carry_the_lora_delta(setup):
    """lora_tokens=concept (deviation): the prefix before the phrase targets W0 M_k e, the rest W0 M_k e + dW_k e."""
    concepts, W0, loras, Pt, _ = setup
    P = Pt.T @ Pt
    Kc = cfr.prior_term(P, None, 0.3, 0.0)
    Ms = [cfr.cfr_remap(c.stats.A, c.stats.B, Kc, 0.2) for c in concepts]
    M = _joint_M(concepts, Kc)
    terms = [fuse.FusionTerm(Mk, c.stats.G, lo, c.stats.G_concept) for Mk, c, lo in zip(Ms, concepts, loras)]
    out = fuse.fuse_closed_form(W0, M, terms, cfr.prior_term(P, None, 0.05, 0.0), 0.4)
    tokens, experts = [], []
    for Mk, c, lo in zip(Ms, concepts, loras):
        start = 2  # _problem: positions 0-1 are the shared prefix, the phrase starts at 2
        tokens += [c.erased[:, :start].reshape(-1, D), c.erased[:, start:].reshape(-1, D)]
        experts += [{n: W0[n] @ Mk for n in W0},
                    {n: W0[n] @ Mk + (lora_delta(lo, n) if n in lo.factors else 0) for n in W0}]
    ref = lstsq_fusion(W0, cfr.refine_weights(W0, M), tokens, experts, 0.4, Pt, 0.05)
    every = fuse.fuse_closed_form(W0, M, [fuse.FusionTerm(t.base_remap, t.G, t.lora) for t in terms],
                                  cfr.prior_term(P, None, 0.05, 0.0), 0.4)
    for n in W0:
        assert rel_err(out[n], ref[n]) < 1e-6, n
        assert rel_err(out[n], every[n]) > 1e-3, n  # the prefix's LoRA target made a difference


def test_factorised_equals_direct_normal_equation_solve(setup):
    """Both memory routes (low-rank Z and dense C) equal the direct per-layer normal-equation solve."""
    concepts, W0, loras, Pt, _ = setup
    K = cfr.prior_term(Pt.T @ Pt, None, 0.1, 0.0)
    M = _joint_M(concepts, K)
    lam = 0.5
    eye = torch.eye(D, dtype=torch.float64)
    R = lam * eye + K + sum(c.stats.G for c in concepts)
    many = [make_lora(torch.Generator().manual_seed(7 + i), W0, rank=12) for i in range(3)]  # forces the C route
    for ls in (loras, many):
        terms = [fuse.FusionTerm(M, c.stats.G, lo) for c, lo in zip(concepts, ls)]
        out = fuse.fuse_closed_form(W0, M, terms, K, lam)
        for n, W in W0.items():
            rhs = lam * W @ M + W @ K
            for c, lo in zip(concepts, ls):
                Wk = W @ M + (lora_delta(lo, n) if n in lo.factors else 0)
                rhs = rhs + Wk @ c.stats.G
            direct = torch.linalg.solve(R, rhs, left=False)
            assert_close(out[n], direct, rtol=1e-9, atol=1e-10, msg=n)
            # normal equations of the fusion objective
            assert_close(out[n] @ R, rhs, rtol=1e-9, atol=1e-9, msg=n)


def test_zero_deltas_no_prior_joint_returns_W_cfr(setup):
    concepts, W0, _, _, _ = setup
    M = _joint_M(concepts, None, lam=0.7)
    zero = [make_lora(torch.Generator().manual_seed(0), W0, scale=0.0) for _ in concepts]
    terms = [fuse.FusionTerm(M, c.stats.G, lo) for c, lo in zip(concepts, zero)]
    out = fuse.fuse_closed_form(W0, M, terms, None, 0.0)
    W_cfr = cfr.refine_weights(W0, M)
    for n in W0:
        assert_close(out[n], W_cfr[n], rtol=1e-9, atol=1e-11, msg=n)


def test_absent_projection_gets_zero_delta(setup):
    concepts, W0, _, _, _ = setup
    M = _joint_M(concepts, None)
    lo = make_lora(torch.Generator().manual_seed(5), W0, skip=tuple(n for n in W0 if n != "mid.attn2.to_v"))
    out = fuse.fuse_closed_form(W0, M, [fuse.FusionTerm(M, concepts[0].stats.G, lo)], None, 1e-6)
    assert set(out) == set(W0)
    naive = fuse.fuse_naive(W0, M, [lo])
    for n in W0:
        expected = W0[n] @ M + (lora_delta(lo, n) if n in lo.factors else 0)
        assert_close(naive[n], expected, rtol=1e-12, atol=1e-12)


def test_incremental_fusion_equals_full(setup):
    concepts, W0, loras, Pt, _ = setup
    K = cfr.prior_term(Pt.T @ Pt, None, 0.1, 0.0)
    M = _joint_M(concepts, K)
    terms = [fuse.FusionTerm(M, c.stats.G, lo) for c, lo in zip(concepts, loras)]
    a = fuse.fuse_closed_form(W0, M, terms, K, 0.2)
    b = fuse.fuse_closed_form(W0, M, list(reversed(terms)), K, 0.2)  # order-independent
    for n in W0:
        assert_close(a[n], b[n], rtol=1e-10, atol=1e-12)


def test_fusion_bad_inputs_raise(setup):
    concepts, W0, loras, _, _ = setup
    M = torch.eye(D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"singular.*fusion.lam > 0"):
        fuse.fuse_closed_form(W0, M, [], None, 0.0)
    bad = concepts[0].stats.G.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"terms\[0\].G has non-finite"):
        fuse.fuse_closed_form(W0, M, [fuse.FusionTerm(M, bad, loras[0])], None, 1.0)
    with pytest.raises(TypeError, match="expected LoraFactors"):
        fuse.fuse_closed_form(W0, M, [fuse.FusionTerm(M, concepts[0].stats.G, object())], None, 1.0)
    from types import SimpleNamespace

    alien = SimpleNamespace(factors={"other.to_k": (torch.zeros(1, D), torch.zeros(3, 1))}, scale=1.0)
    with pytest.raises(ValueError, match="not in W0"):
        fuse.fuse_naive(W0, M, [alien])


def test_fusion_does_not_mutate_and_keeps_dtype(setup):
    concepts, W0, loras, _, _ = setup
    W32 = {n: w.float() for n, w in W0.items()}
    before = {n: w.clone() for n, w in W32.items()}
    M = _joint_M(concepts, None)
    G_before = concepts[0].stats.G.clone()
    out = fuse.fuse_closed_form(W32, M, [fuse.FusionTerm(M, concepts[0].stats.G, loras[0])], None, 1.0)
    for n in W32:
        assert out[n].dtype == torch.float32 and torch.equal(W32[n], before[n])
    assert torch.equal(concepts[0].stats.G, G_before)
