"""Seeded image generation (spec Stage A and H), one explicit ``torch.Generator`` per image.

The official code creates a generator and never passes it (spec §6.9), so its training images and samples
are not reproducible. Here image ``i`` is drawn from ``torch.Generator("cpu").manual_seed(seeds[i])``; diffusers
draws each latent of a batch from its own generator, so an image depends on its prompt and seed only, not on
which other images share its batch (up to float rounding of batched kernels).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from PIL import Image

logger = logging.getLogger(__name__)


def generate_images(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance_scale: float,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
) -> list[Image.Image]:
    """Generate one image per ``(prompt, seed)`` with the pipeline's own ``__call__``.

    Args:
        pipe: a text-to-image pipeline (``models.load_pipeline``).
        prompts: N prompts.
        seeds: N integer seeds; image i uses ``torch.Generator("cpu").manual_seed(seeds[i])``.
        steps: sampler steps (``num_inference_steps``).
        guidance_scale: classifier-free guidance scale (7.5 in the paper).
        batch_size: images per pipeline call.
        progress: optional ``progress(done, total)`` after each batch.
        height, width: output size in pixels; ``None`` = the UNet's default.
        negative_prompt: optional negative prompt shared by all images.

    Returns:
        N ``PIL.Image`` in prompt order.
    """
    if isinstance(prompts, str) or len(prompts) != len(seeds):
        raise ValueError(f"prompts ({len(prompts)}) and seeds ({len(seeds)}) must be lists of equal length")
    if batch_size < 1 or steps < 1:
        raise ValueError(f"batch_size ({batch_size}) and steps ({steps}) must be >= 1")
    images: list[Image.Image] = []
    total = len(prompts)
    for start in range(0, total, batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        out = pipe(
            prompt=batch_prompts,
            negative_prompt=[negative_prompt] * len(batch_prompts) if negative_prompt is not None else None,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generators,
            height=height,
            width=width,
            output_type="pil",
        )
        images.extend(out.images)
        logger.debug("generated %d/%d images", len(images), total)
        if progress is not None:
            progress(len(images), total)
    return images
