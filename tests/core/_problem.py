"""A small random CFR/fusion problem with explicit token-level data (float64, d = 12, three layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mace_core.text_stats import ConceptStats, concept_statistics

D = 12
L = 9
LAYERS = {"down.attn2.to_v": 8, "mid.attn2.to_v": 20, "down.attn2.to_k": 8, "mid.attn2.to_k": 20}


@dataclass
class Concept:
    erased: torch.Tensor  # [N, L, d]
    mapping: torch.Tensor  # [N, L, d]
    matches: list  # N x (i_idx, j_idx)
    stats: ConceptStats

    def matched_tokens(self):
        xs = [self.erased[k, list(i)] for k, (i, _) in enumerate(self.matches)]
        ys = [self.mapping[k, list(j)] for k, (_, j) in enumerate(self.matches)]
        return xs, ys

    def all_tokens(self):
        return self.erased.reshape(-1, self.erased.shape[-1])


def make_concept(gen: torch.Generator, n_prompts: int = 3, d: int = D, length: int = L) -> Concept:
    erased = torch.randn(n_prompts, length, d, generator=gen, dtype=torch.float64)
    mapping = torch.randn(n_prompts, length, d, generator=gen, dtype=torch.float64)
    matches = []
    for _ in range(n_prompts):
        n_t = int(torch.randint(1, 3, (1,), generator=gen))
        # prefix shared, span of n_t dropped in erased, mapping shifted by one
        i_idx = [0, 1] + list(range(2 + n_t, length))
        j_idx = [0, 1] + list(range(3, 3 + len(i_idx) - 2))
        matches.append((i_idx, j_idx))
    # prefix tokens identical in both prompts (causal CLIP): identity constraints
    mapping[:, :2] = erased[:, :2]
    return Concept(erased, mapping, matches, concept_statistics(erased, mapping, matches))


def make_weights(gen: torch.Generator, d: int = D, layers: dict = LAYERS) -> dict[str, torch.Tensor]:
    return {n: torch.randn(o, d, generator=gen, dtype=torch.float64) for n, o in layers.items()}


def make_lora(gen: torch.Generator, W0: dict, rank: int = 1, scale: float = 0.7, skip: tuple = ()):
    from types import SimpleNamespace

    factors = {}
    for n, W in W0.items():
        if n in skip:
            continue
        factors[n] = (torch.randn(rank, W.shape[1], generator=gen, dtype=torch.float64),
                      torch.randn(W.shape[0], rank, generator=gen, dtype=torch.float64))
    return SimpleNamespace(factors=factors, scale=scale)


def lora_delta(lora, name):
    down, up = lora.factors[name]
    return lora.scale * up @ down
