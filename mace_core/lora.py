"""Per-concept LoRA training with the masked attention loss (spec Stage F; paper Eq. 3-5).

For concept k, starting from a base UNet whose cross-attention projections hold ``base_weights``
(``W0·M_k`` in ``independent`` mode, ``W0·M`` in ``joint`` mode, DESIGN.md "Incremental semantics"), a rank-r
LoRA ``ΔW^l = s · up^l down^l`` is trained on every ``attn2.to_k`` / ``attn2.to_v`` (paper Eq. 4) so that the
cross-attention probabilities of the concept's tokens inside its segmentation mask vanish (Eq. 3), at
timesteps drawn by concept-focal importance sampling (Eq. 5).

What differs from the official trainer (spec Stage F, §6), and why:

- Only the ``attn2`` to_k/to_v adapters exist (official: adapters on to_q/k/v/out of all 32 attention modules,
  only the 32 trained, the rest saved with ``up = 0`` and fused with no effect). Same trained function, less
  compute and smaller files.
- Images go to the VAE in the SD ``[-1, 1]`` convention (official: ImageNet mean/std, §6.6, a bug).
- The loss uses every batch element (official: element 0 only, §6.4).
- All randomness (LoRA init, image order, prompt choice, timesteps, noise, VAE posterior sample) comes from one
  ``torch.Generator`` seeded by ``seed``; the global RNG is neither used nor advanced (official: the shared
  global RNG stream makes LoRA k depend on the concepts trained before it, §1 Stage F "Randomness").
- The UNet copy runs in ``eval()`` mode (official ``train()``); SD UNets have no dropout by default, so the
  forward is identical, and ``eval()`` guarantees no hidden RNG use.
- Training always runs in float32 on a private copy, whatever the pipeline's dtype (official: fp32).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mace_core.attention_loss import AttentionCapture, masked_attention_loss
from mace_core.config import LoraConfig
from mace_core.models import encode_prompts_with_pooled
from mace_core.unet_layers import apply_weights, cross_attention_projections

logger = logging.getLogger(__name__)

ADAPTER = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default file name for load_lora_weights


# ---------------------------------------------------------------------------------------------------------
# Factors
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoraFactors:
    """Trained LoRA of one concept: ``ΔW^l = scale · up^l @ down^l`` per projection (paper Eq. 4).

    Attributes:
        factors: projection name -> ``(down[r, d_in], up[d_out, r])``, float32 CPU tensors
            (peft's ``lora_A.weight`` and ``lora_B.weight``).
        scale: peft's ``scaling = lora_alpha / r`` (1.0 for the official ``alpha = r``).
    """

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float = 1.0
    _rank: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if not self.factors:
            raise ValueError("LoraFactors.factors is empty: pass at least one projection's (down, up)")
        ranks = set()
        for name, pair in self.factors.items():
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"factors[{name!r}] must be a (down, up) tuple of tensors")
            down, up = pair
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise ValueError(
                    f"factors[{name!r}] has down {tuple(down.shape)} and up {tuple(up.shape)}: "
                    "expected down[r, d_in] and up[d_out, r]"
                )
            ranks.add(down.shape[0])
        if len(ranks) != 1:
            raise ValueError(f"LoraFactors mixes ranks {sorted(ranks)}: all projections must share rank r")
        object.__setattr__(self, "_rank", ranks.pop())

    @property
    def rank(self) -> int:
        """LoRA rank r (shared by all projections)."""
        return self._rank

    def delta(self, name: str) -> torch.Tensor:
        """``ΔW`` of projection ``name``, ``Tensor[d_out, d_in]`` float32."""
        down, up = self.factors[name]
        return lora_delta(down, up, self.scale)


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``ΔW = scale · up @ down`` (paper Eq. 4; peft ``get_delta_weight``).

    Args:
        down: ``Tensor[r, d_in]`` (peft ``lora_A.weight``).
        up: ``Tensor[d_out, r]`` (peft ``lora_B.weight``).
        scale: ``lora_alpha / r``.

    Returns:
        ``Tensor[d_out, d_in]`` in the promoted dtype of ``down`` and ``up``.
    """
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise ValueError("lora_delta needs down[r, d_in] and up[d_out, r], "
                         f"got {tuple(down.shape)} and {tuple(up.shape)}")
    return (up @ down) * scale


# ---------------------------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoraTrainingData:
    """One concept's training set (spec Stage D ``MACEDataset``).

    Attributes:
        images: ``Tensor[N, 3, H, W]`` float in ``[-1, 1]`` (SD convention; spec §6.6).
        masks: ``Tensor[N, 1, H, W]`` with values in ``{0, 1}`` (concept segmentation), or ``None`` (styles:
            all pixels count).
        prompts: erased prompts; one is drawn at random per batch element.
        targets: the concept phrase contained in each prompt (same length as ``prompts``).
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    prompts: list[str]
    targets: list[str]

    def __post_init__(self) -> None:
        img = self.images
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3 or not img.is_floating_point():
            raise ValueError(f"images must be a float Tensor[N, 3, H, W], got {getattr(img, 'shape', type(img))}")
        if img.shape[0] == 0:
            raise ValueError("images is empty: pass at least one training image")
        if img.min() < -1.0 - 1e-6 or img.max() > 1.0 + 1e-6:
            raise ValueError(
                f"images range [{img.min().item():.3f}, {img.max().item():.3f}] is outside [-1, 1]: "
                "map uint8 pixels x with x / 127.5 - 1 (SD convention, spec §6.6)"
            )
        if self.masks is not None:
            m = self.masks
            if m.ndim != 4 or m.shape[0] != img.shape[0] or m.shape[1] != 1 or m.shape[2:] != img.shape[2:]:
                raise ValueError(f"masks must have shape {[img.shape[0], 1, *img.shape[2:]]}, got {list(m.shape)}")
            if not ((m == 0) | (m == 1)).all():
                raise ValueError("masks must contain only 0 and 1: threshold them (e.g. mask > 0.5) first")
        if not self.prompts or len(self.prompts) != len(self.targets):
            raise ValueError(
                f"prompts ({len(self.prompts)}) and targets ({len(self.targets)}) must be non-empty and of equal "
                "length: targets[i] is the concept phrase inside prompts[i]"
            )


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def _inject_lora(unet: torch.nn.Module, names: list[str], rank: int, generator: torch.Generator) -> None:
    """Add one peft LoRA adapter to exactly ``names``; seed its init from ``generator``.

    peft's ``init_lora_weights="gaussian"`` draws ``lora_A ~ N(0, 1/r)`` (the official ``LoRALinearLayer``
    init, std 1/rank) and sets ``lora_B = 0``, but from the global RNG; the draw is redone here from
    ``generator`` and the global RNG state is restored (``fork_rng``).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    config = PeftLoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=names)
    with torch.random.fork_rng(devices=[]):
        inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    with torch.no_grad():
        for name in names:
            module = unet.get_submodule(name)
            lora_a = module.lora_A[ADAPTER].weight
            lora_a.copy_(torch.randn(lora_a.shape, generator=generator, dtype=torch.float32) / rank)
            module.lora_B[ADAPTER].weight.zero_()


def _lora_parameters(unet: torch.nn.Module, names: list[str]) -> list[torch.nn.Parameter]:
    """The trainable parameters, in a fixed order: (lora_A, lora_B) of each projection in ``names``."""
    params = []
    for name in names:
        module = unet.get_submodule(name)
        params += [module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight]
    return params


def extract_lora_factors(unet: torch.nn.Module, names: list[str] | None = None) -> LoraFactors:
    """Read the peft adapter of ``unet`` back as ``LoraFactors`` (float32 CPU clones)."""
    if names is None:
        names = cross_attention_projections(unet)
    factors, scales = {}, set()
    for name in names:
        module = unet.get_submodule(name)
        down = module.lora_A[ADAPTER].weight.detach().to("cpu", torch.float32).clone()
        up = module.lora_B[ADAPTER].weight.detach().to("cpu", torch.float32).clone()
        factors[name] = (down, up)
        scales.add(float(module.scaling[ADAPTER]))
    if len(scales) != 1:
        raise ValueError(f"adapter scalings differ between projections: {sorted(scales)}")
    return LoraFactors(factors=factors, scale=scales.pop())


def _sample_timesteps(n: int, generator: torch.Generator, num_timesteps: int, cfg: LoraConfig) -> torch.Tensor:
    """CFIS (paper Eq. 5, ``mace_core.cfis``) or uniform ``{0..T-1}`` when ``cfg.cfis`` is False."""
    if not cfg.cfis:
        return torch.randint(0, num_timesteps, (n,), generator=generator)
    from mace_core.cfis import sample_timesteps

    return sample_timesteps(n, generator, num_timesteps, cfg.cfis_gamma, cfg.cfis_t1, cfg.cfis_t2)


def train_concept_lora(
    pipe,
    base_weights: dict[str, torch.Tensor],
    data: LoraTrainingData,
    cfg: LoraConfig,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> LoraFactors:
    """Train one concept's LoRA on attn2 to_k/to_v with the masked attention loss (spec Stage F).

    The caller's pipeline is never modified: the UNet is deep-copied (float32, pipeline device), ``base_weights``
    are written into the copy, and a peft adapter is added to every cross-attention to_k/to_v.

    Steps per optimiser step (batch ``b = cfg.batch_size``):
    1. images: next ``b`` indices of a seeded per-epoch permutation; latents ``z = VAE posterior sample ·
       scaling_factor`` (posterior mean/std computed once, the sample redrawn each step, as the official
       ``latent_dist.sample()``);
    2. timesteps ``t`` from CFIS (Eq. 5) or uniform; noise ``ε ~ N(0, I)``; ``x_t = add_noise(z, ε, t)``
       (DDPM schedule of the pipeline's scheduler config);
    3. prompts: one random erased prompt per element, its text conditioning (frozen text encoder(s), exactly
       as at generation) and its token mask ``S`` (concept tokens, plus EOS and padding if
       ``cfg.include_eos_and_padding``);
    4. UNet forward under ``AttentionCapture``; loss = ``masked_attention_loss`` (Eq. 3) with the images'
       masks if ``cfg.use_masks`` and masks exist;
    5. AdamW step (betas 0.9/0.999, eps 1e-8, ``cfg.weight_decay``) after clipping the gradient norm to
       ``cfg.max_grad_norm``.

    Args:
        pipe: pipeline from ``models.load_pipeline`` (any dtype; its VAE and text encoder are used frozen).
        base_weights: projection name -> ``W[d_out, d]`` to train on (``W0·M_k`` or ``W0·M``); a subset of
            ``cross_attention_projections(pipe.unet)``; ``{}`` trains on the pipeline's own weights.
        data: the concept's images, masks, prompts and target phrases.
        cfg: rank, learning rate, steps, batch size, CFIS and mask options.
        seed: seeds the single ``torch.Generator`` behind every random draw (bit-identical result on CPU).
        progress: optional ``progress(step, total, loss)`` called after every step (step is 1-based).

    Returns:
        ``LoraFactors`` with ``scale = 1`` (``lora_alpha = r``) for every cross-attention projection.
    """
    from diffusers import DDPMScheduler

    from mace_core.prompts import concept_token_mask

    device = pipe.device
    generator = torch.Generator(device="cpu").manual_seed(int(seed))

    # 0. private float32 UNet with the base weights and a LoRA on attn2 to_k / to_v only
    unet = copy.deepcopy(pipe.unet)
    if unet.dtype != torch.float32:
        unet = unet.to(dtype=torch.float32)
    unet = unet.to(device=device)
    unet.requires_grad_(False)
    unet.eval()
    names = cross_attention_projections(unet)
    unknown = sorted(set(base_weights) - set(names))
    if unknown:
        raise ValueError(
            f"base_weights has {len(unknown)} names that are not cross-attention projections (first: {unknown[0]!r}): "
            "key it by cross_attention_projections(pipe.unet)"
        )
    apply_weights(unet, base_weights)
    _inject_lora(unet, names, cfg.rank, generator)
    params = _lora_parameters(unet, names)
    for p in params:
        p.requires_grad_(True)
    trainable = {id(p) for p in unet.parameters() if p.requires_grad}
    if trainable != {id(p) for p in params}:  # internal invariant: nothing but the adapters may train
        raise RuntimeError("unexpected trainable parameters outside the attn2 to_k/to_v LoRA adapters")

    # 1. prompt conditioning and token masks (frozen text encoders; computed once)
    tokenizer = pipe.tokenizer
    token_masks = torch.stack(
        [concept_token_mask(tokenizer, p, t, cfg.include_eos_and_padding) for p, t in zip(data.prompts, data.targets)]
    )  # (P, L) bool
    embeds, pooled = encode_prompts_with_pooled(pipe, list(data.prompts))
    embeds = embeds.to(device=device, dtype=torch.float32)  # (P, L, d)
    if token_masks.shape[1] != embeds.shape[1]:
        raise ValueError(f"tokenizer length {token_masks.shape[1]} != text encoder length {embeds.shape[1]}")
    if pooled is not None:
        pooled = pooled.to(device=device, dtype=torch.float32)

    # 2. VAE posterior of every image, [-1, 1] convention (spec §6.6), computed once
    vae = pipe.vae
    with torch.no_grad():
        means, stds = [], []
        for start in range(0, data.images.shape[0], 8):
            chunk = data.images[start : start + 8].to(device=device, dtype=vae.dtype)
            dist = vae.encode(chunk).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    latent_mean, latent_std = torch.cat(means), torch.cat(stds)  # (N, C, h, w)
    scaling = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    masks = data.masks if (cfg.use_masks and data.masks is not None) else None
    if cfg.use_masks and data.masks is None:
        logger.info("use_masks is set but the data has no masks: the loss covers all pixels")

    # 3. SDXL micro-conditioning: original size = target size = the training image size, no crop
    added_cond = None
    if getattr(unet.config, "addition_embed_type", None) == "text_time":
        if pooled is None:
            raise ValueError("this UNet expects SDXL text_time conditioning but the pipeline gives no pooled embeds")
        h_img, w_img = data.images.shape[2:]
        time_ids = torch.tensor([[h_img, w_img, 0, 0, h_img, w_img]], dtype=torch.float32, device=device)

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    num_timesteps = int(scheduler.config.num_train_timesteps)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
    )

    n_images, n_prompts, bsz = data.images.shape[0], len(data.prompts), cfg.batch_size
    order: list[int] = []
    logger.info("training LoRA r=%d on %d projections, %d steps, batch %d", cfg.rank, len(names), cfg.steps, bsz)
    for step in range(1, cfg.steps + 1):
        # 1. images (per-epoch permutation) and their posterior samples
        while len(order) < bsz:
            order += torch.randperm(n_images, generator=generator).tolist()
        idx, order = torch.tensor(order[:bsz]), order[bsz:]
        eps_z = torch.randn(latent_mean[idx].shape, generator=generator).to(device)
        latents = (latent_mean[idx] + latent_std[idx] * eps_z - shift) * scaling
        # 2. timesteps and noise
        timesteps = _sample_timesteps(bsz, generator, num_timesteps, cfg).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        # 3. prompts
        pidx = torch.randint(0, n_prompts, (bsz,), generator=generator)
        cond = embeds[pidx]
        if pooled is not None:
            added_cond = {"text_embeds": pooled[pidx], "time_ids": time_ids.repeat(bsz, 1)}
        # 4. forward under capture, Eq. 3
        with AttentionCapture(unet) as capture:
            unet(noisy, timesteps, encoder_hidden_states=cond, added_cond_kwargs=added_cond)
        loss = masked_attention_loss(
            capture.probs,
            token_masks[pidx].to(device),
            masks[idx].to(device) if masks is not None else None,
        )
        # 5. optimiser step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        value = float(loss.detach())
        logger.debug("step %d/%d loss %.6f", step, cfg.steps, value)
        if progress is not None:
            progress(step, cfg.steps, value)

    return extract_lora_factors(unet, names)


# ---------------------------------------------------------------------------------------------------------
# Serialisation (diffusers load_lora_weights format, peft keys)
# ---------------------------------------------------------------------------------------------------------


def canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors header with sorted JSON keys, so equal tensors give equal bytes.

    safetensors serialises ``__metadata__`` from a Rust HashMap: with more than one metadata key (diffusers
    writes ``format`` and ``lora_adapter_metadata``) the key order, and so the file's sha256, changes from
    process to process. Tensor data and offsets are untouched; the header keeps its 8-byte alignment.
    """
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def save_lora(factors: LoraFactors, directory: str | os.PathLike) -> Path:
    """Write ``factors`` so that ``pipe.load_lora_weights(directory)`` loads them (diffusers, peft keys).

    File: ``directory/pytorch_lora_weights.safetensors`` with keys ``unet.<projection>.lora_A.weight`` /
    ``lora_B.weight`` and the adapter metadata (``r``, ``lora_alpha = scale · r``, ``target_modules``) that
    diffusers uses to rebuild the peft config. The same file loads into SD 1.x/2.x and SDXL pipelines.

    Returns:
        the path of the written file.
    """
    from diffusers import StableDiffusionPipeline

    state = {}
    for name, (down, up) in factors.factors.items():
        state[f"{name}.lora_A.weight"] = down.detach().to("cpu").contiguous()
        state[f"{name}.lora_B.weight"] = up.detach().to("cpu").contiguous()
    alpha = factors.scale * factors.rank
    metadata = {
        "r": factors.rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": sorted(factors.factors),
    }
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=state, unet_lora_adapter_metadata=metadata, weight_name=LORA_WEIGHT_NAME
    )
    path = Path(directory) / LORA_WEIGHT_NAME
    canonical_safetensors(path)
    return path


def load_lora(directory: str | os.PathLike) -> LoraFactors:
    """Read a LoRA written by ``save_lora`` (or any diffusers peft-format UNet LoRA) back as ``LoraFactors``."""
    from safetensors import safe_open

    path = Path(directory) / LORA_WEIGHT_NAME
    if not path.is_file():
        raise ValueError(f"no {LORA_WEIGHT_NAME} in {str(directory)!r}: pass a directory written by save_lora")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    downs, ups = {}, {}
    for key, value in tensors.items():
        if not key.startswith("unet."):
            continue
        name = key[len("unet.") :]
        if name.endswith(".lora_A.weight"):
            downs[name[: -len(".lora_A.weight")]] = value.to(torch.float32)
        elif name.endswith(".lora_B.weight"):
            ups[name[: -len(".lora_B.weight")]] = value.to(torch.float32)
    if not downs or set(downs) != set(ups):
        raise ValueError(f"{str(path)!r} has no matching unet lora_A/lora_B pairs: pass a peft-format UNet LoRA")
    adapter = json.loads(meta.get("lora_adapter_metadata", "{}"))
    rank = next(iter(downs.values())).shape[0]
    alpha = float(adapter.get("unet.lora_alpha", rank))
    r = int(adapter.get("unet.r", rank))
    return LoraFactors(factors={n: (downs[n], ups[n]) for n in sorted(downs)}, scale=alpha / r)
