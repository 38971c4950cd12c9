"""Export an erased model as a standard diffusers pipeline directory (spec Stage G "Output").

Only the cross-attention to_k/to_v matrices differ from the base model (spec Stage G), so instead of
copying the whole pipeline the final weights are applied to the caller's UNet, the pipeline is saved, and the
original weights are restored, also if saving fails. The caller's pipeline is unchanged afterwards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from mace_core.unet_layers import apply_weights, get_projection_weights

logger = logging.getLogger(__name__)


def export_pipeline(pipe, weights: dict[str, torch.Tensor], out_dir: str | os.PathLike) -> Path:
    """Save ``pipe`` with ``weights`` in its cross-attention projections (``save_pretrained``, safetensors).

    Args:
        pipe: the base pipeline (``models.load_pipeline``); its weights are restored before returning.
        weights: projection name -> ``W_fin[d_out, d]`` (any float dtype; cast to the UNet's dtype).
        out_dir: directory to write; created if missing.

    Returns:
        ``Path(out_dir)``, loadable with ``models.load_pipeline``.
    """
    if not weights:
        raise ValueError("weights is empty: pass the fused projection weights to export")
    out = Path(out_dir)
    original = get_projection_weights(pipe.unet, list(weights))
    apply_weights(pipe.unet, weights)  # validates every entry before writing
    try:
        pipe.save_pretrained(out, safe_serialization=True)
    finally:
        apply_weights(pipe.unet, original)
    logger.info("exported pipeline with %d edited projections to %s", len(weights), out)
    return out
