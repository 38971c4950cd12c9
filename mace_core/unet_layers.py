"""Cross-attention projection discovery and the one place that writes UNet weights.

MACE edits only the key/value projections of the UNet's cross-attention (``attn2``) modules
(``mace_spec.md`` "Notation": for SD v1.4, 16 modules x {to_k, to_v} = 32 matrices ``W^l`` of shape
``(d_l, d)``). This module

1. discovers those modules by walking the UNet (never assuming 16: SD2 has 16, SDXL 70, tiny test UNets a
   handful) and names them with the module paths that both peft's ``target_modules`` and the
   closed-form code (``cfr.py``, ``fuse.py``) consume;
2. reads their weights (as clones, so callers can never alias live parameters);
3. writes weights back (``apply_weights``), the single mutation point of the project (STYLE.md item 3).

Order (spec "Layer index convention of get_ca_layers"): modules are grouped by top-level UNet child in the
order ``down_blocks``, ``up_blocks``, ``mid_block`` (then anything else), keeping registration order within
a group; the list holds every ``to_v`` name first, then every ``to_k`` name, so index ``l`` of the official
code's ``0..31`` maps to position ``l`` of this list on SD v1.4.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_processor import Attention

logger = logging.getLogger(__name__)

# Top-level UNet children in the official traversal order (spec "Notation"); others go last.
_BLOCK_ORDER = ("down_blocks", "up_blocks", "mid_block")


def cross_attention_modules(unet: torch.nn.Module) -> list[str]:
    """Module paths of every cross-attention ``Attention`` module of ``unet``, in spec order.

    A module counts when it is a diffusers ``Attention`` with ``is_cross_attention`` set (its keys and
    values come from the text conditioning), which in the standard UNets are exactly the ``attn2``
    modules of each ``BasicTransformerBlock``.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (possibly with peft adapters injected).

    Returns:
        list of module names such as ``"down_blocks.0.attentions.0.transformer_blocks.0.attn2"``,
        grouped ``down_blocks``, ``up_blocks``, ``mid_block``, registration order inside each group.
    """
    found: list[str] = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            found.append(name)

    def group(name: str) -> int:
        top = name.split(".", 1)[0]
        return _BLOCK_ORDER.index(top) if top in _BLOCK_ORDER else len(_BLOCK_ORDER)

    # sorted() is stable, so registration order is kept inside each group.
    return sorted(found, key=group)


def cross_attention_projections(unet: torch.nn.Module) -> list[str]:
    """Names of the cross-attention value and key projections: all ``to_v`` then all ``to_k``.

    Spec "Notation": projection index ``0..n-1`` = the ``n`` ``to_v``, ``n..2n-1`` = the ``n`` ``to_k``,
    with the modules in ``down, up, mid`` order (``cross_attention_modules``). The names are valid peft
    ``target_modules`` entries and the keys of every weights dict in ``mace_core``.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.

    Returns:
        ``2 * n`` names, e.g. ``"mid_block.attentions.0.transformer_blocks.0.attn2.to_k"``.

    Raises:
        ValueError: if the UNet has no cross-attention module (not a text-conditioned UNet).
    """
    modules = cross_attention_modules(unet)
    if not modules:
        raise ValueError(
            f"{type(unet).__name__} has no cross-attention (attn2) module: pass a text-conditioned diffusers UNet"
        )
    return [f"{m}.to_v" for m in modules] + [f"{m}.to_k" for m in modules]


def _linear_weight(unet: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The ``weight`` parameter of projection ``name``; sees through a peft LoRA wrapper (``base_layer``)."""
    try:
        module = unet.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"projection {name!r} not found in the UNet: use names from cross_attention_projections(unet)"
        ) from None
    base = getattr(module, "base_layer", module)
    weight = getattr(base, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"module {name!r} is not a linear projection: "
                         "use names from cross_attention_projections(unet)")
    return weight


def get_projection_weights(unet: torch.nn.Module, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Clones of the projection weights ``W^l`` (shape ``(d_out, d)``, the UNet's dtype and device).

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        names: projection names; ``None`` = ``cross_attention_projections(unet)``.

    Returns:
        dict name -> detached clone of the weight, in ``names`` order.
    """
    if names is None:
        names = cross_attention_projections(unet)
    return {name: _linear_weight(unet, name).detach().clone() for name in names}


def apply_weights(unet: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Write ``weights`` into the named projections of ``unet`` in place (the only mutation in mace_core).

    Every entry is validated before anything is written, so a bad dict leaves the UNet untouched.
    Values are cast to the parameter's dtype and device (closed-form results are float64 on CPU; the
    edit is applied in the model's dtype, DESIGN.md "mace_core").

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (peft-wrapped projections write their base layer).
        weights: dict name -> floating tensor of exactly the parameter's shape ``(d_out, d)``.

    Raises:
        ValueError: unknown name, shape mismatch or non-finite values.
        TypeError: a value that is not a floating-point tensor.
    """
    checked: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    for name, value in weights.items():
        param = _linear_weight(unet, name)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"weights[{name!r}] must be a floating-point torch.Tensor, got {type(value).__name__}"
                            f"{'' if not isinstance(value, torch.Tensor) else ' of dtype ' + str(value.dtype)}")
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"weights[{name!r}] has shape {tuple(value.shape)}, expected {tuple(param.shape)}: "
                "pass weights computed for this UNet"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"weights[{name!r}] contains NaN or Inf: check the closed-form solve that produced it")
        checked.append((param, value))
    with torch.no_grad():
        for param, value in checked:
            param.copy_(value.to(device=param.device, dtype=param.dtype))
    logger.debug("applied %d projection weights", len(checked))
