"""Closed-form cross-attention refinement, CFR (spec section 1 Stage E, paper Eq. 1-2, App. B Eq. 19; bug 6.1).

Per projection ``l`` the official code solves (with ``Wcur = W0``)

    min_W  lam ||W - W0^l||^2 + sum_(i,j) ||W c_i - W0^l E'_j||^2 + sum_p ||(W - W0^l) p||^2_K

whose targets are all ``W0^l`` times something, so the solution factorises exactly (spec Stage E):

    W_cfr^l = W0^l M,    M = (lam I + K + A)(lam I + K + B)^{-1}            (one d x d matrix for all layers)

with ``A = sum E'_j E_i^T`` and ``B = sum E_i E_i^T`` over matched tokens of all concepts (``text_stats``) and
the prior ``K = w (P + pw D)`` (general Gram P, domain Gram D). Everything is solved in float64 with
``torch.linalg.solve`` (never an explicit inverse) and cast back to each weight's dtype once.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

SOLVE_DTYPE = torch.float64


def _as_square64(name: str, x: torch.Tensor, d: int | None = None) -> torch.Tensor:
    """Validate a ``[d, d]`` finite tensor and return it as CPU float64 (a new tensor, input untouched)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [d, d], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] != x.shape[1] or (d is not None and x.shape[0] != d):
        want = f"[{d}, {d}]" if d is not None else "[d, d]"
        raise ValueError(f"{name} has shape {tuple(x.shape)}: expected {want}")
    out = x.detach().to(device="cpu", dtype=SOLVE_DTYPE)
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} has non-finite values: recompute the statistics in float32/float64")
    return out


def _check_scalar(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (value >= 0.0) or value == float("inf"):
        raise ValueError(f"{name}={value!r}: expected a finite value >= 0")
    return float(value)


def factor_spd(S: torch.Tensor, name: str, fix: str) -> torch.Tensor:
    """Cholesky factor of the symmetric PSD system matrix ``S`` [d, d] float64, or a one-line ValueError.

    ``S`` is singular (to float64 precision) when a pivot is below ``d * eps * max(diag(S))``; this is the
    case e.g. for ``lam = 0`` with no prior and a rank-deficient token Gram. ``fix`` names the remedy.
    """
    d = S.shape[0]
    chol, info = torch.linalg.cholesky_ex(S)
    scale = float(S.diagonal().abs().max()) if d else 0.0
    tol = d * torch.finfo(SOLVE_DTYPE).eps * max(scale, torch.finfo(SOLVE_DTYPE).tiny)
    min_pivot = float(chol.diagonal().min() ** 2) if int(info) == 0 else 0.0
    if int(info) != 0 or scale == 0.0 or min_pivot <= tol:
        raise ValueError(
            f"{name} is singular (smallest pivot {min_pivot:.3g} <= tolerance {tol:.3g}): {fix}"
        )
    return chol


def prior_term(
    P: torch.Tensor | None,
    D: torch.Tensor | None,
    weight: float,
    domain_weight: float,
    square_weight: bool = False,
) -> torch.Tensor | None:
    """Prior Gram term ``K`` of CFR/fusion (spec Stage E, App. B Eq. 19).

    ``K = w (P + pw D)`` by default. With ``square_weight=True`` it returns ``w^2 (P + pw D)``, reproducing the
    official CFR bug (spec 6.1): the cache is built as ``tps (P + pw D)`` and then passed again with
    ``preserve_scale = tps``, so the effective weight is ``tps^2`` (1e-8 for the celebrity configs). Use it
    only to reproduce the paper's numbers; fusion in the official code applies ``fps`` once.

    Args:
        P: ``[d, d]`` general-prior Gram (COCO captions), or None.
        D: ``[d, d]`` domain-prior Gram (retain list), or None.
        weight: w (``tps`` / ``fps`` in the official configs), >= 0.
        domain_weight: pw, the domain Gram's weight relative to P, >= 0.
        square_weight: apply ``w`` twice (official CFR double scaling).

    Returns:
        ``[d, d]`` float64 tensor, or None when the term is zero (w == 0 or no Gram given).
    """
    # 1. validate scalars
    w = _check_scalar("weight", weight)
    pw = _check_scalar("domain_weight", domain_weight)
    if P is None and D is None:
        if w > 0:
            raise ValueError(f"weight={w} but no prior Gram given: pass P and/or D, or set weight=0")
        return None
    if w == 0.0:
        return None
    # 2. base = P + pw D, both optional
    d = (P if P is not None else D).shape[0]
    base = torch.zeros(d, d, dtype=SOLVE_DTYPE)
    if P is not None:
        base = base + _as_square64("P", P, d)
    if D is not None and pw > 0.0:
        base = base + pw * _as_square64("D", D, d)
    # 3. scale (once, or twice for the official reproduction)
    scale = w * w if square_weight else w
    return scale * base


def cfr_remap(A: torch.Tensor, B: torch.Tensor, K: torch.Tensor | None, lam: float) -> torch.Tensor:
    """The shared CFR re-map ``M = (lam I + K + A)(lam I + K + B)^{-1}`` (spec Stage E, float64).

    ``W_cfr^l = W0^l M`` for every projection; ``M`` solves the normal equations
    ``M (lam I + K + B) = lam I + K + A`` of the per-layer objective divided through by ``W0^l``.

    Args:
        A: ``[d, d]`` sum over matched pairs of ``E'_j E_i^T`` (all concepts).
        B: ``[d, d]`` sum over matched pairs of ``E_i E_i^T``.
        K: ``[d, d]`` prior term from ``prior_term`` or None.
        lam: weight of ``||W - W0||^2`` (>= 0).

    Returns:
        ``M`` ``[d, d]`` float64 (CPU).
    """
    # 1. validate inputs (float64 copies)
    A64 = _as_square64("A", A)
    d = A64.shape[0]
    B64 = _as_square64("B", B, d)
    lam = _check_scalar("lam", lam)
    # 2. system matrix S = lam I + K + B and right-hand side N = lam I + K + A
    reg = lam * torch.eye(d, dtype=SOLVE_DTYPE)
    if K is not None:
        reg = reg + _as_square64("K", K, d)
    S = reg + B64
    N = reg + A64
    # 3. refuse singular systems with the fix, then solve M S = N (right division, no inverse)
    factor_spd(S, "CFR system lam*I + K + B", "set cfr.lam > 0 or cfr.prior_weight > 0 (with a prior Gram)")
    M = torch.linalg.solve(S, N, left=False)
    if not torch.isfinite(M).all():
        raise ValueError("CFR re-map M is non-finite: increase cfr.lam or the prior weight")
    logger.debug("cfr_remap: d=%d lam=%g prior=%s", d, lam, K is not None)
    return M


def refine_weights(W0: dict[str, torch.Tensor], M: torch.Tensor) -> dict[str, torch.Tensor]:
    """``W_cfr^l = W0^l M`` for every projection, computed in float64 and cast back to each dtype once.

    Args:
        W0: ``{projection name: [d_out, d] tensor}`` original to_k/to_v weights (any float dtype/device).
        M: ``[d, d]`` re-map from ``cfr_remap``.

    Returns:
        New dict with the same keys, dtypes and devices as ``W0``; inputs are not modified.
    """
    M64 = _as_square64("M", M)
    d = M64.shape[0]
    out: dict[str, torch.Tensor] = {}
    for name, W in W0.items():
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[1] != d:
            raise ValueError(
                f"W0[{name!r}] has shape {tuple(getattr(W, 'shape', ()))}: expected [d_out, {d}]"
            )
        W64 = W.detach().to(dtype=SOLVE_DTYPE)
        out[name] = (W64 @ M64.to(W64.device)).to(W.dtype)
    return out
