"""Evaluation metrics of the paper (section 4, Eq. 8-9) and a Fréchet distance on classifier features.

Accuracies are fractions in [0, 1]. Efficacy ``acc_e`` is the classifier accuracy on prompts of the
*erased* concepts (lower is better), specificity ``acc_s`` on prompts of *kept* concepts (higher is
better), generality ``acc_g`` on synonyms of erased concepts (lower is better).
"""

from __future__ import annotations

import numpy as np
import torch


def _check_fraction(name: str, value: float) -> float:
    if not (0.0 <= value <= 1.0) or value != value:
        raise ValueError(f"{name}={value!r} is not a fraction in [0, 1]: pass accuracies, not percentages")
    return float(value)


def _harmonic(terms: list[float]) -> float:
    """Harmonic mean; 0 when any term is 0 (the limit of n / sum(1/x))."""
    if any(t == 0.0 for t in terms):
        return 0.0
    return len(terms) / sum(1.0 / t for t in terms)


def harmonic_objects(acc_e: float, acc_s: float, acc_g: float) -> float:
    """H_o = 3 / (1/(1-Acc_e) + 1/Acc_s + 1/(1-Acc_g))  (paper Eq. 8, object erasure)."""
    e, s, g = (_check_fraction(n, v) for n, v in (("acc_e", acc_e), ("acc_s", acc_s), ("acc_g", acc_g)))
    return _harmonic([1.0 - e, s, 1.0 - g])


def harmonic_celebrities(acc_e: float, acc_s: float) -> float:
    """H_c = 2 / (1/(1-Acc_e) + 1/Acc_s)  (paper Eq. 9, celebrity erasure)."""
    e, s = _check_fraction("acc_e", acc_e), _check_fraction("acc_s", acc_s)
    return _harmonic([1.0 - e, s])


def harmonic_art(clip_s: float, clip_e: float) -> float:
    """H_a = CLIP_s - CLIP_e  (paper section 4.4: retained minus erased CLIP score)."""
    return float(clip_s) - float(clip_e)


def top1_accuracy(predicted: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Fraction of ``predicted == target`` over N items (both int arrays of shape [N])."""
    p, t = np.asarray(predicted).reshape(-1), np.asarray(target).reshape(-1)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"predicted {p.shape} and target {t.shape} must be equal, non-empty shapes")
    return float((p == t).mean())


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] (the FID formula).

    d² = |mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a^½ S_b S_a^½)^½), computed in float64 with symmetric
    square roots, so it is exact for PSD covariances and never returns a complex value.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, F] with equal F, got {a.shape} and {b.shape}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("each feature set needs at least 2 samples to estimate a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    if min(a.shape[0], b.shape[0]) < a.shape[1]:
        # Fewer samples than features (e.g. 2048-d Inception features of a few images): with S = X^T X for the
        # centred samples X / sqrt(n - 1), Tr (S_a^½ S_b S_a^½)^½ is the nuclear norm of X_a X_b^T (the same
        # nonzero eigenvalues), so no F x F matrix is formed. Exact, and O(n_a n_b F) instead of O(F^3).
        x_a = (a - mu_a) / np.sqrt(a.shape[0] - 1)
        x_b = (b - mu_b) / np.sqrt(b.shape[0] - 1)
        cross = np.linalg.svd(x_a @ x_b.T, compute_uv=False).sum()
        d2 = float(((mu_a - mu_b) ** 2).sum() + (x_a**2).sum() + (x_b**2).sum() - 2.0 * cross)
        return max(d2, 0.0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(root_a @ s_b @ root_a)
    d2 = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(cross))
    return max(d2, 0.0)


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP score per pair: 100 * cos(image_i, text_i) for rows of [N, D] embeddings (clipped at 0)."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"embeddings must pair up: {tuple(image_embeds.shape)} vs {tuple(text_embeds.shape)}")
    cos = torch.nn.functional.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=-1)
    return (100.0 * cos).clamp(min=0.0)
