"""``assert_close``: one comparison helper that reports the maximum difference and where it is."""

from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-6, atol: float = 0.0,
                 msg: str = "") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    On failure the message gives the maximum absolute difference, its (multi-)index, both values there,
    and the maximum relative difference, so a failing numerics test says *where* it broke.
    """
    a = torch.as_tensor(actual)
    b = torch.as_tensor(expected)
    if a.shape != b.shape:
        raise AssertionError(f"{msg} shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    a64, b64 = a.detach().to(torch.float64).cpu(), b.detach().to(torch.float64).cpu()
    if not torch.isfinite(a64).all():
        raise AssertionError(f"{msg} actual has non-finite values")
    diff = (a64 - b64).abs()
    bound = atol + rtol * b64.abs()
    bad = diff > bound
    if bad.any():
        flat = int(torch.argmax(diff - bound))
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else ()
        rel = (diff / b64.abs().clamp_min(1e-300)).max().item()
        raise AssertionError(
            f"{msg} not close: max abs diff {diff.max().item():.3e}, worst at index {idx} "
            f"(actual {a64[idx].item():.10g}, expected {b64[idx].item():.10g}), max rel diff {rel:.3e}, "
            f"{int(bad.sum())}/{bad.numel()} elements out of tolerance (rtol={rtol}, atol={atol})"
        )


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Frobenius relative error ``||a - b|| / ||b||`` in float64."""
    a = actual.detach().to(torch.float64)
    b = expected.detach().to(torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
