"""Importer for the official MACE prior caches ``cache_*.pt`` (spec Stage C, section 3.2).

An official cache is a ``torch.save``d dict with, for every projection ``l = 0..31`` (16 ``to_v`` then 16
``to_k``, spec "Layer index convention"):

- ``"{l}_for_mat2"``: ``P = sum_t c_t c_t^T``, ``[d, d]`` (the same Gram, stored once per layer);
- ``"{l}_for_mat1"``: ``W0^l P``, ``[d_l, d]``.

Only ``P`` carries information, provided ``mat1 = W0^l P`` for the base model's weights: the CFR/fusion
factorisation (spec 3.2) is exact only then, and the domain caches are distributed without their captions
(issue #20), so this is verified, not assumed. The file is read with ``torch.load(weights_only=True)``:
a cache that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^(\d+)_for_mat([12])$")


@dataclass(frozen=True)
class CacheCheck:
    """Result of verifying one cache against W0.

    Attributes:
        P: the Gram ``[d, d]`` float64.
        n_layers: number of projections in the file.
        worst_layer: name of the projection with the largest ``||mat1 - W0 mat2|| / ||mat1||``.
        worst_rel_err: that relative error.
    """

    P: torch.Tensor
    n_layers: int
    worst_layer: str
    worst_rel_err: float


def check_official_cache(
    path: str | Path, W0: Mapping[str, torch.Tensor], rtol: float = 1e-3
) -> CacheCheck:
    """Load and verify an official cache against the base weights; see :func:`import_official_cache`."""
    # 1. load safely
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"official cache {str(p)!r} does not exist: give the path of cache_coco.pt / cache_cele.pt")
    if not W0:
        raise ValueError("W0 is empty: pass get_projection_weights(unet) of the base model the cache was made with")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"official cache {str(p)!r} needs unsafe unpickling (it holds non-tensor Python objects): refusing; "
            "re-save it as a dict of tensors"
        ) from None
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"official cache {str(p)!r} is not a non-empty dict of tensors: check the file")
    # 2. keys: exactly {l}_for_mat1 and {l}_for_mat2 for l = 0..n-1
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in obj.items():
        m = _KEY.match(str(key))
        if m is None:
            raise ValueError(f"official cache {str(p)!r} has unexpected key {key!r}: expected '<l>_for_mat1/2'")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 2:
            raise ValueError(f"official cache {str(p)!r}: {key!r} is not a 2-D float tensor")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    names = list(W0)
    if sorted(layers) != list(range(len(names))) or any(len(v) != 2 for v in layers.values()):
        raise ValueError(
            f"official cache {str(p)!r} has layers {sorted(layers)[:5]}... ({len(layers)}), expected mat1 and mat2 "
            f"for 0..{len(names) - 1}: pass W0 in cross_attention_projections order for the cache's base model"
        )
    # 3. shapes: mat2 [d, d] identical in every layer, mat1 [d_l, d] = W0^l's shape
    P = layers[0]["2"].to(torch.float64)
    d = P.shape[0]
    if tuple(P.shape) != (d, d):
        raise ValueError(f"official cache {str(p)!r}: 0_for_mat2 has shape {tuple(P.shape)}, expected square [d, d]")
    worst, worst_err = names[0], -1.0
    for idx, name in enumerate(names):
        mat1, mat2 = layers[idx]["1"].to(torch.float64), layers[idx]["2"].to(torch.float64)
        w = W0[name].detach().to("cpu", torch.float64)
        if tuple(mat2.shape) != (d, d) or tuple(mat1.shape) != (w.shape[0], d) or w.shape[1] != d:
            raise ValueError(
                f"official cache {str(p)!r} layer {idx} ({name}): mat1 {tuple(mat1.shape)}, mat2 {tuple(mat2.shape)} "
                f"do not fit W0 {tuple(w.shape)}: the cache was made for another base model"
            )
        if float(torch.linalg.norm(mat2 - P)) > 1e-4 * float(torch.linalg.norm(P)):
            raise ValueError(
                f"official cache {str(p)!r}: mat2 of layer {idx} ({name}) differs from layer 0: "
                "an official cache stores one Gram; the file is corrupted or edited"
            )
        # 4. mat1 = W0^l P, relative to the size of mat1
        err = float(torch.linalg.norm(mat1 - w @ mat2) / torch.linalg.norm(mat1).clamp_min(1e-300))
        if err > worst_err:
            worst, worst_err = name, err
    if not torch.isfinite(P).all():
        raise ValueError(f"official cache {str(p)!r}: the Gram has non-finite values")
    if worst_err > rtol:
        raise ValueError(
            f"official cache {str(p)!r}: mat1 != W0·mat2 (worst layer {worst}, relative error {worst_err:.2e} > "
            f"rtol {rtol:.0e}): it was made with other base weights; pass that model's W0, or raise rtol"
        )
    logger.info("official cache %s: %d layers, d=%d, worst mat1 error %.2e (%s)", p.name, len(names), d, worst_err,
                worst)
    return CacheCheck(P=P.clone(), n_layers=len(names), worst_layer=worst, worst_rel_err=worst_err)


def import_official_cache(path: str | Path, W0: Mapping[str, torch.Tensor], rtol: float = 1e-3) -> torch.Tensor:
    """The single Gram ``P`` (``[d, d]`` float64) of an official ``cache_*.pt``, verified against ``W0``.

    Args:
        path: ``cache_coco.pt`` / ``cache_cele.pt`` / ``cache_art.pt`` (or a ``cache_<i>.pt`` snapshot).
        W0: the base model's projections ``{name: W[d_l, d]}`` in ``unet_layers.cross_attention_projections``
            order (that order is the cache's layer index ``l``).
        rtol: largest accepted ``||mat1 - W0^l mat2||_F / ||mat1||_F`` over layers (fp32 sums over ~4.7e7
            tokens leave ~1e-5; a cache of other weights is off by O(1)).

    Raises:
        ValueError: missing file, unsafe pickle, wrong keys/shapes, inconsistent mat2, or mat1 != W0·mat2
            (naming the worst layer).
    """
    return check_official_cache(path, W0, rtol).P
