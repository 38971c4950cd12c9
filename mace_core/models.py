"""Loading diffusers text-to-image pipelines and encoding prompts exactly as they generate.

Supported families (DESIGN.md "Models"): SD 1.x (CLIP ViT-L text tower, pad = EOS, d = 768), SD 2.x
(OpenCLIP ViT-H, pad = "!", d = 1024) and SDXL (two text encoders whose penultimate hidden states are
concatenated, d = 768 + 1280 = 2048). Everything goes through diffusers' own ``from_pretrained`` and the
pipeline's own ``encode_prompt``, so the text conditioning MACE statistics are computed on is bit-for-bit
the conditioning the UNet sees at generation (including SDXL's clip-skip-style penultimate layer).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# "org/name" as the Hub spells repository ids (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _resolve_path(path: str | os.PathLike) -> tuple[str, bool]:
    """Map ``path`` to (what ``from_pretrained`` gets, is_local), validating local directories.

    ``"miniworld"`` resolves to the shipped pipeline (``miniworld.paths.PIPELINE_DIR``, imported lazily so
    mace_core does not depend on miniworld at import time).
    """
    if str(path) == "miniworld":
        from miniworld.paths import PIPELINE_DIR  # lazy: optional sibling package

        path = PIPELINE_DIR
    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "model_index.json").is_file():
            raise ValueError(
                f"model path {text!r} is not a diffusers pipeline directory (no model_index.json): "
                "pass a directory written by DiffusionPipeline.save_pretrained, or a hub id like 'org/name'"
            )
        return str(local), True
    if isinstance(path, Path) or text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise ValueError(
            f"model path {text!r} does not exist: pass an existing diffusers pipeline directory, "
            "a hub id like 'CompVis/stable-diffusion-v1-4', or 'miniworld'"
        )
    return text, False


def load_pipeline(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """Load a diffusers text-to-image pipeline (SD 1.x / 2.x / SDXL) with ``DiffusionPipeline.from_pretrained``.

    Validation happens before any weight is read: a local path must be a directory containing
    ``model_index.json``; a string that is not an existing path must look like a hub id.
    The safety checker (SD 1.x) is not loaded, as in the official code (spec Stage A).

    Args:
        path: local pipeline directory, hub id, or ``"miniworld"`` (the shipped model).
        dtype: ``"float32"`` | ``"float16"`` | ``"bfloat16"``; all components are loaded in it.
        device: torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        the pipeline (e.g. ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``) on ``device``, with
        diffusers' per-call progress bar off.

    Raises:
        ValueError: bad path, unknown dtype, or a pipeline without ``unet`` and ``text_encoder``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported: use one of {sorted(DTYPES)}")
    source, is_local = _resolve_path(path)

    from diffusers import DiffusionPipeline

    kwargs: dict = {"dtype": DTYPES[dtype]}
    if is_local:
        kwargs["local_files_only"] = True
        with open(Path(source) / "model_index.json") as f:
            if "safety_checker" in json.load(f):
                kwargs["safety_checker"] = None
    logger.info("loading pipeline %s (%s) on %s", source, dtype, device)
    pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise ValueError(
            f"{source!r} loaded as {type(pipe).__name__}, which has no unet/text_encoder: "
            "pass a UNet text-to-image pipeline (SD 1.x, 2.x or SDXL)"
        )
    # callers draw their own progress (stage bars, `mace generate`); diffusers' bar per sampling call would
    # print one line per batch, interleaved across the threads that share a process
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def tokenizers_of(pipe) -> list:
    """The pipeline's tokenizers in encoder order: ``[tokenizer]`` or ``[tokenizer, tokenizer_2]`` (SDXL)."""
    return [tok for tok in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if tok is not None]


def context_dim(pipe) -> int:
    """Cross-attention context width ``d`` (768 SD1, 1024 SD2, 2048 SDXL): the UNet's ``cross_attention_dim``."""
    dim = pipe.unet.config.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        if len(set(dim)) != 1:
            raise ValueError(f"UNet has per-block cross_attention_dim {tuple(dim)}: MACE needs one context width d")
        dim = dim[0]
    return int(dim)


def _is_dual_encoder(pipe) -> bool:
    """True for SDXL-style pipelines whose ``encode_prompt`` takes ``prompt_2`` and returns pooled embeddings."""
    return "prompt_2" in inspect.signature(pipe.encode_prompt).parameters


def encode_prompts_with_pooled(
    pipe, prompts: list[str], batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like ``encode_prompts`` and also SDXL's pooled text embeddings (``None`` for single-encoder pipelines).

    Returns:
        ``(embeds[N, L, d], pooled[N, d_pool] or None)``, in the pipeline's dtype and device.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings, e.g. ['a photo of a cat']")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    dual = _is_dual_encoder(pipe)
    embeds: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            out = pipe.encode_prompt(
                prompt=chunk, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            # SD: (prompt_embeds, negative); SDXL: (prompt_embeds, negative, pooled, negative_pooled).
            embeds.append(out[0])
            if dual:
                pooled.append(out[2])
    return torch.cat(embeds), (torch.cat(pooled) if dual else None)


def encode_prompts(pipe, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Text conditioning of ``prompts`` exactly as the pipeline feeds it to the UNet at generation.

    Calls the pipeline's own ``encode_prompt`` (no classifier-free guidance, one image per prompt) under
    ``torch.no_grad``. SD 1.x/2.x: last hidden state after the final layer norm; SDXL: concatenation of both
    encoders' penultimate hidden states (``d = 2048``).

    Args:
        pipe: a pipeline from ``load_pipeline``.
        prompts: N prompt strings (padded/truncated to the tokenizer's ``model_max_length`` L = 77).
        batch_size: prompts per text-encoder forward.

    Returns:
        ``Tensor[N, L, d]`` in the pipeline's dtype, on the pipeline's device.
    """
    return encode_prompts_with_pooled(pipe, prompts, batch_size)[0]
