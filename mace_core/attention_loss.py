"""Cross-attention probability capture and the masked attention loss (paper Eq. 3).

Spec Stage F "Attention capture" / "Loss": during the LoRA forward pass every cross-attention call exposes
its probabilities ``A = softmax(Q K^T / sqrt(d_head))`` (shape ``(B, heads, HW, L)``), and the loss is

    L = (1/B) * sum_b sum_{l in cross-attn calls} || A_l[b, h=1..heads, pixels in M_l(b), tokens in S(b)] ||_F

one Frobenius norm (not squared) per layer and batch element, jointly over heads x masked pixels x selected
tokens, as the official ``AttnController.loss`` computes it. Deviation (spec §6.4): the official code keeps
only batch element 0 (``preserve_prior=True``); here every element counts and the per-element sums are
averaged over the batch, so batch size 1 reproduces the official value exactly.

The capture processor computes attention explicitly (no SDPA), because the probabilities must exist as a
tensor to be penalised and differentiated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mace_core.unet_layers import cross_attention_modules

logger = logging.getLogger(__name__)


class CaptureAttnProcessor:
    """Explicit cross-attention (same math as diffusers ``AttnProcessor``) that records the probabilities.

    Args:
        store: dict that receives ``store[name] = probs[B, heads, HW, L]`` on every call (a module called
            twice in one forward, which standard UNets never do, would keep its last call).
        name: the attention module's path, used as the key.
    """

    def __init__(self, store: dict[str, torch.Tensor], name: str):
        self.store = store
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # 1. projections: query (B, HW, inner), key/value (B, L, inner) from the text context
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        # 2. split heads: (B, heads, n, d_head)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        # 3. probabilities A = softmax(Q K^T * scale), scale = 1/sqrt(d_head) (attn.scale); (B, heads, HW, L)
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1])
        if attn.upcast_softmax:
            scores = scores.float()
        probs = scores.softmax(dim=-1)
        self.store[self.name] = probs
        probs = probs.to(value.dtype)

        # 4. weighted values, merge heads, output projection (as diffusers AttnProcessor)
        hidden_states = torch.matmul(probs, value).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionCapture:
    """Context manager: installs ``CaptureAttnProcessor`` on every cross-attention module of ``unet``.

    Usage::

        with AttentionCapture(unet) as capture:
            unet(x_t, t, encoder_hidden_states=c)
        loss = masked_attention_loss(capture.probs, token_mask, pixel_mask)

    ``capture.probs`` is a dict module name -> ``probs[B, heads, HW, L]`` (float32 when the module upcasts,
    else the UNet dtype), in call order, refreshed by each forward. On exit the original processors are put
    back, also when the block raises.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.probs: dict[str, torch.Tensor] = {}
        self._saved: dict[str, object] = {}

    def clear(self) -> None:
        """Forget the recorded probabilities (e.g. between two forwards in one ``with`` block)."""
        self.probs.clear()

    def __enter__(self) -> AttentionCapture:
        names = cross_attention_modules(self.unet)
        if not names:
            raise ValueError(f"{type(self.unet).__name__} has no cross-attention module to capture")
        for name in names:
            module = self.unet.get_submodule(name)
            self._saved[name] = module.processor
            module.set_processor(CaptureAttnProcessor(self.probs, name))
        return self

    def __exit__(self, *exc) -> None:
        for name, processor in self._saved.items():
            self.unet.get_submodule(name).set_processor(processor)
        self._saved.clear()


def _layer_hw(hw: int, height: int, width: int) -> tuple[int, int]:
    """Spatial size (h, w) of a layer with ``hw`` tokens, for a latent/mask of aspect ``height:width``."""
    h = round(math.sqrt(hw * height / width))
    w = hw // max(h, 1)
    if h * w != hw:
        raise ValueError(
            f"cannot map {hw} attention pixels to the mask's {height}x{width} aspect ratio: "
            "pass a pixel_mask with the training image's aspect ratio"
        )
    return h, w


def _frobenius(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """sqrt(sum x^2) over ``dims`` with a zero (not NaN) gradient where the norm is 0."""
    sq = x.square().sum(dim=dims)
    nonzero = sq > 0
    return torch.where(nonzero, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


def masked_attention_loss(
    probs_by_layer: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    token_mask: torch.Tensor,
    pixel_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Paper Eq. 3 as the official code implements it, for every batch element (spec Stage F, §6.4).

    Steps per layer ``l`` with probabilities ``A_l[B, heads, HW, L]``:
    1. pixel selection ``M_l``: ``pixel_mask`` nearest-resized to the layer's ``h x w`` (``h*w = HW``) and
       thresholded ``> 0.5``, flattened row-major (the UNet's token order); all pixels if ``None``;
    2. token selection ``S``: ``token_mask`` (target tokens, plus EOS and padding with the official
       ``use_pooler``);
    3. ``n_l[b] = || A_l[b][:, M_l(b), S(b)] ||_F`` (one norm over heads x pixels x tokens).
    Result: ``sum_l mean_b n_l[b]``; with B = 1 this equals the official loss.

    Args:
        probs_by_layer: dict name -> probs (as ``AttentionCapture.probs``) or a list of probs tensors.
        token_mask: ``BoolTensor[B, L]``.
        pixel_mask: ``Tensor[B, 1, H, W]`` with values in [0, 1] (any float/bool dtype), or ``None``.

    Returns:
        scalar tensor (float32 or the probabilities' dtype), differentiable w.r.t. the probabilities.
    """
    layers = list(probs_by_layer.values()) if isinstance(probs_by_layer, Mapping) else list(probs_by_layer)
    if not layers:
        raise ValueError("probs_by_layer is empty: run the UNet forward inside AttentionCapture first")
    if token_mask.dtype != torch.bool or token_mask.ndim != 2:
        raise TypeError(f"token_mask must be a BoolTensor[B, L], got {token_mask.dtype} "
                        f"of shape {tuple(token_mask.shape)}")
    batch, length = token_mask.shape
    if pixel_mask is not None and (pixel_mask.ndim != 4 or pixel_mask.shape[:2] != (batch, 1)):
        raise ValueError(f"pixel_mask must have shape [B={batch}, 1, H, W], got {tuple(pixel_mask.shape)}")

    total = None
    for probs in layers:
        if probs.ndim != 4 or probs.shape[0] != batch or probs.shape[-1] != length:
            raise ValueError(
                f"attention probs of shape {tuple(probs.shape)} do not match token_mask [B={batch}, L={length}]: "
                "capture with the same batch and prompt length"
            )
        hw = probs.shape[2]
        # (B, 1, 1, L) token selector
        select = token_mask.to(probs.dtype)[:, None, None, :]
        if pixel_mask is not None:
            h, w = _layer_hw(hw, pixel_mask.shape[2], pixel_mask.shape[3])
            resized = F.interpolate(pixel_mask.float(), size=(h, w), mode="nearest")
            pixels = (resized > 0.5).reshape(batch, hw).to(probs.dtype)   # (B, HW)
            select = select * pixels[:, None, :, None]                      # (B, 1, HW, L)
        per_element = _frobenius(probs * select, dims=(1, 2, 3))            # (B,)
        layer_loss = per_element.mean()
        total = layer_loss if total is None else total + layer_loss
    return total
