"""Concept-focal importance sampling of diffusion timesteps, CFIS (spec Stage F; paper Eq. 5).

    p(t) = (1/Z) [ sigmoid(g (t - t1)) - sigmoid(g (t - t2)) ],   t in {0, ..., T-1}

With the paper's defaults (g = 0.05, t1 = 200, t2 = 400, T = 1000) ~86% of the mass lies in [200, 400] and
the mean is ~300: LoRA training focuses on the timesteps where the concept's layout is decided. Sampling
takes an explicit ``torch.Generator`` (the official code uses the global numpy RNG, spec 6.9).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def cfis_density(
    num_timesteps: int = 1000, gamma: float = 0.05, t1: int = 200, t2: int = 400
) -> torch.Tensor:
    """Normalised CFIS probabilities ``p[t]`` (paper Eq. 5) as a float64 tensor of shape ``[num_timesteps]``.

    Args:
        num_timesteps: T, the scheduler's number of training timesteps.
        gamma: slope g of the two sigmoids (> 0).
        t1: window start; t2: window end (0 <= t1 < t2).
    """
    # 1. validate
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps={num_timesteps!r}: expected a positive int such as 1000")
    if not (gamma > 0):
        raise ValueError(f"gamma={gamma!r}: expected a positive slope such as 0.05")
    if not (0 <= t1 < t2):
        raise ValueError(f"t1={t1!r}, t2={t2!r}: expected 0 <= t1 < t2, e.g. t1=200, t2=400")
    # 2. difference of sigmoids, normalised
    t = torch.arange(num_timesteps, dtype=torch.float64)
    p = torch.sigmoid(gamma * (t - t1)) - torch.sigmoid(gamma * (t - t2))
    total = p.sum()
    if not (total > 0):
        raise ValueError(f"CFIS density is zero on 0..{num_timesteps - 1}: move t1/t2 inside the range")
    return p / total


def sample_timesteps(
    n: int,
    generator: torch.Generator,
    num_timesteps: int = 1000,
    gamma: float = 0.05,
    t1: int = 200,
    t2: int = 400,
) -> torch.Tensor:
    """Draw ``n`` timesteps from the CFIS density with an explicit generator.

    Args:
        n: number of timesteps (batch size).
        generator: a CPU ``torch.Generator`` (same seed -> identical samples).

    Returns:
        LongTensor ``[n]`` with values in ``[0, num_timesteps)``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive int")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    p = cfis_density(num_timesteps, gamma, t1, t2)
    return torch.multinomial(p, n, replacement=True, generator=generator)
