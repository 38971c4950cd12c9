"""Reference implementations used to check (and benchmark) the factorised closed forms.

- ``official_cfr`` / ``official_fusion``: faithful re-implementations of the official per-layer approach
  (``prepare_k_v`` + ``closed_form_refinement``, spec Stage E / G): per-token *values* ``v = W e`` are
  materialised for every layer, then each layer is solved on its own with an explicit inverse, as the
  official code does. The prior cache follows the official layout (``mat1 = W0 * cache``, ``mat2 = cache``
  with ``cache = tps (P + pw D)`` passed again with ``preserve_scale``; ``square_weight`` selects it).
- ``lstsq_cfr`` / ``lstsq_fusion``: the paper's objective solved per layer by a direct least-squares
  problem (sqrt-weighted stacked rows, ``torch.linalg.lstsq``), independent of any normal-equation algebra.

Token-level inputs are given explicitly (lists of ``[n, d]`` tensors), so the references never see the
``A, B, G`` statistics that the code under test uses.
"""

from __future__ import annotations

import math

import torch


def official_cfr(W0, erased_tokens, mapping_tokens, lam, prior=None, tps=0.0, pw=0.0, square_weight=True,
                 dtype=torch.float64):
    """Official Stage E per layer.

    Args:
        W0: {name: [d_out, d]}.
        erased_tokens: list over prompt pairs of ``[m, d]`` matched erased-token embeddings ``c_i``.
        mapping_tokens: list of ``[m, d]`` matched mapping-token embeddings ``E'_j`` (same order).
        prior: optional ``(P, D)`` Grams (either may be None).
        tps, pw: prior weights; ``square_weight=True`` is the official normal path (``tps**2``).
    """
    c = torch.cat(erased_tokens).to(dtype)
    e_new = torch.cat(mapping_tokens).to(dtype)
    d = c.shape[1]
    out = {}
    for name, W in W0.items():
        W = W.to(dtype)
        v = e_new @ W.T  # per-token values for this layer, materialised [n_tok, d_out]
        mat1 = lam * W + v.T @ c
        mat2 = lam * torch.eye(d, dtype=dtype) + c.T @ c
        if prior is not None and tps > 0:
            P, D = prior
            cache2 = torch.zeros(d, d, dtype=dtype)
            if P is not None:
                cache2 = cache2 + P.to(dtype)
            if D is not None:
                cache2 = cache2 + pw * D.to(dtype)
            cache2 = tps * cache2
            cache1 = W @ cache2
            s = tps if square_weight else 1.0
            mat1 = mat1 + s * cache1
            mat2 = mat2 + s * cache2
        out[name] = mat1 @ torch.inverse(mat2)
    return out


def official_fusion(W0, W_cfr, concept_tokens, deltas, lam, prior=None, fps=0.0, pw=0.0, dtype=torch.float64):
    """Official Stage G per layer: targets ``(W_cfr + dW_k) e`` for all tokens of concept k.

    Args:
        W0, W_cfr: {name: [d_out, d]}.
        concept_tokens: list over concepts of ``[n_k, d]`` token embeddings (all L tokens of the erased prompts).
        deltas: list over concepts of {name: dW [d_out, d]} (missing name = zero delta).
    """
    d = concept_tokens[0].shape[1]
    out = {}
    for name, W in W0.items():
        W = W.to(dtype)
        Wc = W_cfr[name].to(dtype)
        mat1 = lam * Wc
        mat2 = lam * torch.eye(d, dtype=dtype)
        for e, delta in zip(concept_tokens, deltas):
            e = e.to(dtype)
            Wk = Wc + (delta[name].to(dtype) if name in delta else 0.0)
            v = e @ Wk.T  # materialised values [n_k, d_out]
            mat1 = mat1 + v.T @ e
            mat2 = mat2 + e.T @ e
        if prior is not None and fps > 0:
            P, D = prior
            cache2 = torch.zeros(d, d, dtype=dtype)
            if P is not None:
                cache2 = cache2 + P.to(dtype)
            if D is not None:
                cache2 = cache2 + pw * D.to(dtype)
            mat1 = mat1 + fps * W @ cache2
            mat2 = mat2 + fps * cache2
        out[name] = mat1 @ torch.inverse(mat2)
    return out


def _lstsq(inputs, targets):
    """Solve min ||X W^T - Y|| for W given stacked rows X [n, d], Y [n, d_out]."""
    sol = torch.linalg.lstsq(torch.cat(inputs), torch.cat(targets), driver="gelsd").solution
    return sol.T


def _add_prior_rows(X, Y, W, prior_tokens, prior_weight, domain_tokens, domain_weight) -> None:
    """Append the rows of w ||(W' - W) p||^2 + w pw ||(W' - W) q||^2 to a least-squares system X W'^T = Y."""
    for tokens, weight in ((prior_tokens, prior_weight), (domain_tokens, prior_weight * domain_weight)):
        if tokens is not None and weight > 0:
            s = math.sqrt(weight)
            X.append(s * tokens.double())
            Y.append(s * tokens.double() @ W.T)


def lstsq_cfr(W0, erased_tokens, mapping_tokens, lam, prior_tokens=None, prior_weight=0.0,
              domain_tokens=None, domain_weight=0.0):
    """Paper Eq. 1-2 (+ lam term) as one least-squares problem per layer (float64).

    Objective: lam ||W - W0||^2 + sum ||W c_i - W0 E'_j||^2 + w sum_p ||W p - W0 p||^2 + w pw sum_q ||W q - W0 q||^2,
    with prior tokens ``p`` (P = sum p p^T) and domain tokens ``q`` given explicitly.
    """
    c = torch.cat(erased_tokens).double()
    e_new = torch.cat(mapping_tokens).double()
    d = c.shape[1]
    out = {}
    for name, W in W0.items():
        W = W.double()
        X, Y = [c], [e_new @ W.T]
        if lam > 0:
            X.append(math.sqrt(lam) * torch.eye(d, dtype=torch.float64))
            Y.append(math.sqrt(lam) * W.T)
        _add_prior_rows(X, Y, W, prior_tokens, prior_weight, domain_tokens, domain_weight)
        out[name] = _lstsq(X, Y)
    return out


def lstsq_fusion(W0, W_anchor, concept_tokens, experts, lam, prior_tokens=None, prior_weight=0.0,
                 domain_tokens=None, domain_weight=0.0):
    """Paper Eq. 7 (+ lam term) per layer by least squares.

    Objective: lam ||W - W_anchor||^2 + sum_k sum_e ||W e - W_k e||^2 + w ||(W - W0) p||^2 + w pw ||(W - W0) q||^2,
    where ``experts[k][name] = W_k`` is concept k's expert weight (e.g. ``W0 M_k + dW_k``).
    """
    d = concept_tokens[0].shape[1]
    out = {}
    for name, W in W0.items():
        W = W.double()
        X, Y = [], []
        for e, expert in zip(concept_tokens, experts):
            X.append(e.double())
            Y.append(e.double() @ expert[name].double().T)
        if lam > 0:
            X.append(math.sqrt(lam) * torch.eye(d, dtype=torch.float64))
            Y.append(math.sqrt(lam) * W_anchor[name].double().T)
        _add_prior_rows(X, Y, W, prior_tokens, prior_weight, domain_tokens, domain_weight)
        out[name] = _lstsq(X, Y)
    return out
