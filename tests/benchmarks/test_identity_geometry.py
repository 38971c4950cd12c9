"""``benchmarks.class_tokens.identity_geometry`` on embeddings whose structure is known by construction."""

import torch

from benchmarks.class_tokens import identity_geometry

NAMES = [f"F{f} L{last}" for f in range(25) for last in range(8)]


def _additive(seed: int = 0) -> torch.Tensor:
    """Embeddings that are exactly first-name vector + last-name vector (+ a shared offset), width 32."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(25, 32, generator=g, dtype=torch.float64)
    last = torch.randn(8, 32, generator=g, dtype=torch.float64)
    return torch.stack([first[i // 8] + last[i % 8] for i in range(200)]) + 5.0


def test_additive_names_are_fully_explained_and_low_rank():
    out = identity_geometry(_additive(), NAMES)
    assert out["name_parts_r2"] > 1 - 1e-9
    assert out["dims_99"] <= 24 + 7  # the deviations lie in the span of 24 first-name and 7 last-name contrasts


def test_erased_rows_in_the_kept_span_are_fully_explained():
    g = torch.Generator().manual_seed(2)
    kept = (torch.randn(100, 16, generator=g, dtype=torch.float64)
            @ torch.randn(16, 64, generator=g, dtype=torch.float64))
    erased = torch.randn(100, 100, generator=g, dtype=torch.float64) @ kept
    out = identity_geometry(torch.cat([kept, erased]), NAMES)
    assert out["erased_r2_from_kept_min"] > 1 - 1e-9
    assert out["dims_99"] <= 16


def test_unstructured_embeddings_score_low_on_every_structure_figure():
    noise = torch.randn(200, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = identity_geometry(noise, NAMES)
    assert out["name_parts_r2"] < 0.3
    assert out["erased_r2_from_kept_mean"] < 0.6  # 100 kept directions of 256 explain about 100/256
    assert out["dims_90"] > 50
    assert abs(out["mean_pair_cos"]) < 0.05


def test_swap_context_replaces_exactly_the_named_span():
    from benchmarks.class_tokens import CONTEXT_SWAPS, swap_context

    own, anchor = torch.zeros(10, 3), torch.ones(10, 3)
    taken = {s: swap_context(own, anchor, name_start=4, eos=7, swap=s)[:, 0].nonzero().flatten().tolist()
             for s in CONTEXT_SWAPS}
    assert taken == {"none": [], "name": [4, 5, 6], "tail": [7, 8, 9], "padding": [8, 9],
                     "through_eos": list(range(8))}
    assert own.sum() == 0  # the input is not modified


def test_r2_from_more_kept_rows_never_drops_and_reaches_one_in_the_span():
    from benchmarks.class_tokens import KEPT_COUNTS

    out = identity_geometry(torch.randn(200, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                            NAMES)
    r2 = [out["erased_r2_by_kept"][k] for k in KEPT_COUNTS]
    assert r2 == sorted(r2) and r2[-1] == out["erased_r2_from_kept_mean"]
    assert r2[-1] > 1 - 1e-9  # 100 random rows span all 64 dimensions
    assert 28 / 64 - 0.15 < out["erased_r2_by_kept"][28] < 28 / 64 + 0.15  # K random directions explain about K/d
