"""Sufficient statistics (spec 3.2): definitions, additivity, streaming Gram with resumable state."""

from __future__ import annotations

import pytest
import torch

from mace_core.text_stats import ConceptStats, GramAccumulator, concept_statistics
from tests.core._problem import make_concept
from tests.helpers.asserts import assert_close


def test_concept_statistics_match_definitions():
    gen = torch.Generator().manual_seed(0)
    c = make_concept(gen, n_prompts=4)
    A = torch.zeros(12, 12, dtype=torch.float64)
    B = torch.zeros_like(A)
    G = torch.zeros_like(A)
    G_concept = torch.zeros_like(A)
    n_matched = 0
    for k, (ii, jj) in enumerate(c.matches):
        for i, j in zip(ii, jj):
            A += torch.outer(c.mapping[k, j], c.erased[k, i])
            B += torch.outer(c.erased[k, i], c.erased[k, i])
            n_matched += 1
        for t in range(c.erased.shape[1]):
            G += torch.outer(c.erased[k, t], c.erased[k, t])
            if t >= 2:  # _problem: the phrase starts right after the 2-token matched prefix
                G_concept += torch.outer(c.erased[k, t], c.erased[k, t])
    s = c.stats
    assert_close(s.A, A, rtol=1e-12, atol=1e-12)
    assert_close(s.B, B, rtol=1e-12, atol=1e-12)
    assert_close(s.G, G, rtol=1e-12, atol=1e-12)
    assert_close(s.G_concept, G_concept, rtol=1e-12, atol=1e-12)
    assert (s.n_pairs, s.n_matched, s.n_tokens) == (4, n_matched, 4 * 9)
    assert s.A.dtype == s.B.dtype == s.G.dtype == torch.float64


def test_stats_of_a_set_equal_sum_of_per_concept_stats():
    gen = torch.Generator().manual_seed(1)
    cs = [make_concept(gen, n_prompts=n) for n in (2, 3, 5)]
    full = concept_statistics(torch.cat([c.erased for c in cs]), torch.cat([c.mapping for c in cs]),
                              [m for c in cs for m in c.matches])
    summed = ConceptStats.zeros(12) + cs[0].stats + cs[1].stats + cs[2].stats
    via_sum = sum(c.stats for c in cs)
    for s in (summed, via_sum):
        for name in ("A", "B", "G", "G_concept"):
            assert_close(getattr(s, name), getattr(full, name), rtol=1e-12, atol=1e-12, msg=name)
        assert (s.n_pairs, s.n_matched, s.n_tokens) == (full.n_pairs, full.n_matched, full.n_tokens)


def test_float32_embeddings_are_accumulated_in_float64():
    gen = torch.Generator().manual_seed(2)
    c = make_concept(gen)
    s32 = concept_statistics(c.erased.float(), c.mapping.float(), c.matches)
    s64 = concept_statistics(c.erased.float().double(), c.mapping.float().double(), c.matches)
    assert s32.G.dtype == torch.float64 and torch.equal(s32.G, s64.G)


def test_concept_statistics_rejects_bad_input():
    e = torch.randn(2, 5, 4)
    m = [([0, 4], [0, 4])] * 2
    bad = e.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="erased_emb has 1 non-finite"):
        concept_statistics(bad, e, m)
    with pytest.raises(ValueError, match="expected \\[N, L, d\\]"):
        concept_statistics(e[0], e[0], m)
    with pytest.raises(ValueError, match="matches has 1 entries for 2"):
        concept_statistics(e, e, m[:1])
    with pytest.raises(ValueError, match="outside"):
        concept_statistics(e, e, [([0, 5], [0, 4])] * 2)
    with pytest.raises(ValueError, match="cannot add ConceptStats of width"):
        ConceptStats.zeros(3) + ConceptStats.zeros(4)


def test_gram_accumulator_chunked_equals_one_shot_and_resumes():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 77, 16, generator=gen)
    one = GramAccumulator(16)
    one.update(x)
    chunked = GramAccumulator(16)
    for part in torch.split(x, 3):
        chunked.update(part)
    assert one.count == chunked.count == 770
    assert_close(chunked.gram, one.gram, rtol=1e-12, atol=1e-10)
    x64 = x.double().reshape(-1, 16)
    assert_close(one.gram, x64.T @ x64, rtol=1e-12, atol=1e-10)
    # resume: first half, save, new accumulator, load, second half == one-shot
    first = GramAccumulator(16)
    first.update(x[:4])
    state = first.state_dict()
    resumed = GramAccumulator(16)
    resumed.load_state_dict(state)
    resumed.update(x[4:])
    direct = GramAccumulator(16)
    direct.update(x[:4])
    direct.update(x[4:])
    assert torch.equal(resumed.gram, direct.gram) and resumed.count == direct.count
    # state_dict is a copy: mutating it does not touch the accumulator
    state["gram"].zero_()
    assert first.gram.abs().sum() > 0


def test_gram_accumulator_rejects_bad_input():
    acc = GramAccumulator(4)
    with pytest.raises(ValueError, match=r"expected \[..., 4\]"):
        acc.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(torch.tensor([[float("inf"), 0, 0, 0]]))
    with pytest.raises(ValueError, match="expected d=4"):
        acc.load_state_dict(GramAccumulator(5).state_dict())
    with pytest.raises(ValueError, match="d=0"):
        GramAccumulator(0)
