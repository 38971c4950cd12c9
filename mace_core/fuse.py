"""Closed-form multi-LoRA fusion (spec section 1 Stage G, section 3.2; paper Eq. 7) and naive fusion (Eq. 6).

Per projection ``l`` the fused weight solves

    min_W  lam ||W - W0^l M||^2 + sum_k sum_(e in E_k) ||W e - (W0^l M_k + s_k dW_k^l [e in C_k]) e||^2
           + ||(W - W0^l) K^{1/2}||^2

(``E_k`` = all L token embeddings of concept k's erased prompts, ``G_k = sum e e^T``, ``dW_k^l = up_k^l down_k^l``,
``K`` the prior term, ``M`` the CFR re-map of the whole set). The normal equations give, with one shared
``R = lam I + sum_k G_k + K``:

    W_fin^l = W0^l [ (lam M + sum_k M_k G_k + K) R^{-1} ]  +  sum_k s_k up_k^l ( down_k^l G_k R^{-1} )

i.e. a shared d x d re-map of W0 plus a rank-(sum of LoRA ranks) correction per layer (with ``G_k`` in the LoRA
term replaced by ``G_k^C``, the Gram of ``C_k``, when only the tokens ``C_k`` carry the LoRA delta).

``C_k`` is every token in the paper and the official code (``G_k^C = G_k``). Deviation (``fusion.lora_tokens:
concept``): ``C_k`` = the concept phrase and the tokens after it. The tokens before the phrase ("a photo of a")
are, through the causal text encoder, exactly those of every prompt sharing that prefix; the LoRA's change to
them is a side effect of its rank-1 update (its loss only involves the phrase, EOS and padding), and carrying it
into the fused weights alters every kept prompt. With ``concept`` those tokens keep ``W0 M_k e``.

The official code is the ``joint`` case ``M_k = M`` for every k (every LoRA trained on the CFR of the whole
set). With per-concept bases (``independent`` mode: ``M_k`` = CFR of concept k alone) each concept's expert is
``W0 M_k + dW_k``.

Cost: O(d^3) for the shared solve plus one GEMM per layer; the official code instead materialises per-token values
for all layers of all concepts (spec 5). Extra memory is bounded by one weights-sized float64 buffer, whatever the
number of concepts (see ``fuse_closed_form``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from mace_core.cfr import SOLVE_DTYPE, _as_square64, _check_scalar, factor_spd

logger = logging.getLogger(__name__)


@runtime_checkable
class LoraLike(Protocol):
    """Anything shaped like ``mace_core.lora.LoraFactors``.

    ``factors``: ``{projection name: (down [r, d], up [d_out, r])}``; ``scale``: float multiplier s, so that
    ``dW = scale * up @ down``.
    """

    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float


@dataclass(frozen=True)
class FusionTerm:
    """One concept's contribution to the fusion objective (spec 3.2).

    Attributes:
        base_remap: ``M_k`` ``[d, d]``: the concept's expert is ``W0 M_k + dW_k``. Joint mode (official): pass the
            *same tensor object* M for every concept (it is then multiplied once by ``sum G_k``).
        G: ``[d, d]`` Gram of all L tokens of the concept's erased prompts (``ConceptStats.G``).
        lora: the concept's LoRA factors (``LoraFactors`` or any ``LoraLike``); projections it lacks get zero delta.
        G_lora: ``[d, d]`` Gram of the tokens whose target includes the LoRA delta; None (the official Eq. 7) means
            ``G``. ``ConceptStats.G_concept`` keeps the tokens before the concept phrase at ``W0 M_k e``, see
            ``fuse_closed_form``.
    """

    base_remap: torch.Tensor
    G: torch.Tensor
    lora: Any
    G_lora: torch.Tensor | None = None


def _check_lora(lora: Any, index: int) -> None:
    if not (hasattr(lora, "factors") and hasattr(lora, "scale")):
        raise TypeError(
            f"terms[{index}].lora is a {type(lora).__name__}: expected LoraFactors (attributes factors and scale)"
        )


def _lora_factors64(
    lora: Any, W0: Mapping[str, torch.Tensor], d: int, index: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Validated ``{name: (down [r, d], s * up [d_out, r])}`` as CPU float64, for names present in W0."""
    _check_lora(lora, index)
    scale = float(lora.scale)
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"terms[{index}].lora.scale={lora.scale!r}: expected a finite float")
    out = {}
    for name, pair in lora.factors.items():
        if name not in W0:
            raise ValueError(
                f"LoRA {index} has projection {name!r} that is not in W0: fuse LoRAs trained on this model's layers"
            )
        down, up = pair
        d_out = W0[name].shape[0]
        if (down.dim() != 2 or up.dim() != 2 or down.shape[1] != d or up.shape[0] != d_out
                or up.shape[1] != down.shape[0]):
            raise ValueError(
                f"LoRA {index} {name!r}: down {tuple(down.shape)}, up {tuple(up.shape)}; "
                f"expected down [r, {d}] and up [{d_out}, r]"
            )
        down64 = down.detach().to(device="cpu", dtype=SOLVE_DTYPE)
        up64 = up.detach().to(device="cpu", dtype=SOLVE_DTYPE) * scale
        if not (torch.isfinite(down64).all() and torch.isfinite(up64).all()):
            raise ValueError(f"LoRA {index} {name!r} has non-finite factors: retrain or reload it")
        out[name] = (down64, up64)
    return out


def _check_W0(W0: Mapping[str, torch.Tensor], d: int) -> None:
    if not isinstance(W0, Mapping) or not W0:
        raise ValueError("W0 is empty: pass {projection name: [d_out, d] weight} for every to_k/to_v")
    for name, W in W0.items():
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[1] != d:
            raise ValueError(f"W0[{name!r}] has shape {tuple(getattr(W, 'shape', ()))}: expected [d_out, {d}]")


_CHUNK = 64  # concepts per dense-accumulator GEMM (dense route): bounds the pending low-rank rows


def _flush_dense(
    rows: dict[str, list[torch.Tensor]], cols: dict[str, list[torch.Tensor]], dense: dict[str, torch.Tensor]
) -> None:
    """``C^l += [s_k up_k^l]_k @ [down_k^l G_k]_k`` for the pending concepts, one GEMM per layer."""
    for n in rows:
        if not rows[n]:
            continue
        U, Y = torch.cat(cols[n], dim=1), torch.cat(rows[n])
        if n in dense:
            dense[n].addmm_(U, Y)
        else:
            dense[n] = U @ Y
        rows[n].clear()
        cols[n].clear()


def fuse_closed_form(
    W0: Mapping[str, torch.Tensor],
    M: torch.Tensor,
    terms: Sequence[FusionTerm],
    K: torch.Tensor | None,
    lam: float,
) -> dict[str, torch.Tensor]:
    """Closed-form fusion in the factorised form (spec 3.2, paper Eq. 7; see module docstring).

    Args:
        W0: ``{name: [d_out, d]}`` original to_k/to_v weights (any dtype/device; returned in the same).
        M: ``[d, d]`` CFR re-map of the whole set: the ``lam`` term anchors ``W`` to ``W_cfr = W0 M``.
        terms: one FusionTerm per concept (may be empty: then only the lam/prior terms remain).
        K: ``[d, d]`` prior term (``cfr.prior_term``, weight applied once as in the official fusion) or None.
        lam: weight of ``||W - W_cfr||^2`` (>= 0).

    Returns:
        ``{name: W_fin [d_out, d]}`` new tensors in each weight's dtype and device.

    Memory: the per-layer corrections are either formed as ``Z = (down_k G_k) R^{-1}`` (``n_concepts * r`` rows per
    layer) or accumulated as ``C^l = sum_k s_k up_k (down_k G_k)`` (``d_out`` rows per layer) and solved once,
    whichever is smaller, so the extra float64 memory never exceeds the size of the weights.
    """
    # 1. validate and gather float64 inputs
    M64 = _as_square64("M", M)
    d = M64.shape[0]
    _check_W0(W0, d)
    lam = _check_scalar("lam", lam)
    K64 = _as_square64("K", K, d) if K is not None else None
    if not isinstance(terms, Sequence):
        raise TypeError(f"terms must be a list of FusionTerm, got {type(terms).__name__}")
    names = list(W0)
    d_out = {n: W0[n].shape[0] for n in names}
    total_rank = 0
    for k, term in enumerate(terms):
        if not isinstance(term, FusionTerm):
            raise TypeError(f"terms[{k}] is a {type(term).__name__}: expected FusionTerm")
        _check_lora(term.lora, k)
        total_rank += sum(int(pair[0].shape[0]) for name, pair in term.lora.factors.items() if name in W0)
    use_z = total_rank <= sum(d_out.values())

    # 2. R = lam I + sum G_k + K ; N = lam M + sum M_k G_k + K (joint bases share one product)
    R = lam * torch.eye(d, dtype=SOLVE_DTYPE)
    N = lam * M64
    if K64 is not None:
        R = R + K64
        N = N + K64
    g_by_base: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    # per-layer low-rank pieces: rows (down_k G_k) and columns (s_k up_k), or dense accumulators C^l
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    cols: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    dense: dict[str, torch.Tensor] = {}
    for k, term in enumerate(terms):
        G64 = _as_square64(f"terms[{k}].G", term.G, d)
        R.add_(G64)  # R is our own tensor; G64 may alias the caller's G and is never written
        key = id(term.base_remap)
        if key in g_by_base:
            g_by_base[key][1].add_(G64)
        else:
            g_by_base[key] = (_as_square64(f"terms[{k}].base_remap", term.base_remap, d), G64.clone())
        # 3. LoRA numerators down_k G_k, all layers of this concept in one GEMM
        factors = _lora_factors64(term.lora, W0, d, k)
        if not factors:
            continue
        lnames = list(factors)
        G_lora = G64 if term.G_lora is None else _as_square64(f"terms[{k}].G_lora", term.G_lora, d)
        stacked = torch.cat([factors[n][0] for n in lnames]) @ G_lora  # [sum_l r, d]
        offset = 0
        for n in lnames:
            r = factors[n][0].shape[0]
            y = stacked[offset : offset + r]
            offset += r
            up = factors[n][1]  # already multiplied by s_k
            rows[n].append(y)
            cols[n].append(up)
        if not use_z and (k + 1) % _CHUNK == 0:
            _flush_dense(rows, cols, dense)
    if not use_z:
        _flush_dense(rows, cols, dense)
    for base, g_sum in g_by_base.values():
        N = N + base @ g_sum

    # 4. one factorisation of R, then shared = N R^{-1}
    chol = factor_spd(
        R, "fusion system lam*I + sum_k G_k + K", "set fusion.lam > 0 or fusion.prior_weight > 0 (with a prior Gram)"
    )
    shared = torch.linalg.solve(R, N, left=False)

    # 5. per layer: W0 shared + low-rank correction R^{-1}-solved; cast back once
    out: dict[str, torch.Tensor] = {}
    for n in names:
        W = W0[n]
        W64 = W.detach().to(device="cpu", dtype=SOLVE_DTYPE)
        fused = W64 @ shared
        if use_z and rows[n]:
            Y = torch.cat(rows[n])  # [n_k r, d]
            Z = torch.cholesky_solve(Y.T, chol).T  # Y R^{-1} (R symmetric)
            fused.addmm_(torch.cat(cols[n], dim=1), Z)
        elif not use_z and n in dense:
            fused += torch.cholesky_solve(dense.pop(n).T, chol).T
        if not torch.isfinite(fused).all():
            raise ValueError(f"fused weight {n!r} is non-finite: increase fusion.lam or the prior weight")
        out[n] = fused.to(device=W.device, dtype=W.dtype)
    logger.debug("fuse_closed_form: %d concepts, %d layers, route=%s", len(terms), len(names), "Z" if use_z else "C")
    return out


def fuse_naive(
    W0: Mapping[str, torch.Tensor], M: torch.Tensor, loras: Sequence[Any]
) -> dict[str, torch.Tensor]:
    """Naive fusion (paper Eq. 6, ablation): ``W^l = W0^l M + sum_k s_k up_k^l down_k^l``.

    Args:
        W0: ``{name: [d_out, d]}`` original weights.
        M: ``[d, d]`` CFR re-map (identity for "LoRA only").
        loras: LoraFactors-like objects; projections absent from a LoRA get zero delta.
    """
    M64 = _as_square64("M", M)
    d = M64.shape[0]
    _check_W0(W0, d)
    facs = [_lora_factors64(lora, W0, d, k) for k, lora in enumerate(loras)]
    out = {}
    for n, W in W0.items():
        fused = W.detach().to(device="cpu", dtype=SOLVE_DTYPE) @ M64
        for f in facs:
            if n in f:
                down, up = f[n]
                fused.addmm_(up, down)
        out[n] = fused.to(device=W.device, dtype=W.dtype)
    return out
