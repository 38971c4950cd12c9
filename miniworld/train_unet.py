"""Train the miniworld UNet and assemble the pipeline: ``python -m miniworld.train_unet``.

Latent diffusion as in Stable Diffusion: frozen VAE and text encoder, epsilon prediction on SD's
scaled-linear schedule, 10 % empty captions for classifier-free guidance, Min-SNR-5 loss
weighting, EMA weights shipped. Writes the full StableDiffusionPipeline to --out.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from mace_core.attention_loss import AttentionCapture
from miniworld import render as render_module
from miniworld.attention_supervision import corpus_attention_targets, subject_attention_loss
from miniworld.models import make_scheduler, make_unet
from miniworld.paths import PIPELINE_DIR, TRAIN_DIR
from miniworld.tokenizer import load_tokenizer
from miniworld.train_clip import tokenize
from miniworld.training import (
    corpus_images,
    finish,
    mix_weights,
    parse_mix,
    parser,
    start,
    to_float,
    warmup_cosine,
)

P_UNCOND = 0.1
SNR_GAMMA = 5.0


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (uint8[N, 32, 32, 3]), unscaled: float[N, 4, 8, 8] each."""
    means, stds = [], []
    for i in range(0, len(images), 1000):
        post = vae.encode(to_float(images[i : i + 1000].to(device))).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_contexts(text_encoder: CLIPTextModel, ids: torch.Tensor, device: str) -> torch.Tensor:
    """The frozen text encoder's output for every caption, computed once (float16[N, 77, d])."""
    out = [text_encoder(ids[i : i + 4096].to(device))[0].half() for i in range(0, len(ids), 4096)]
    return torch.cat(out)


def content_key(model: torch.nn.Module, data: bytes) -> str:
    """A short key of a frozen model's weights and the data it encodes, naming an on-disk cache of the result:
    a changed model or corpus gets a new key."""
    key = hashlib.sha256(data)
    for name, tensor in sorted(model.state_dict().items()):
        key.update(name.encode() + tensor.detach().cpu().float().numpy().tobytes())
    return key.hexdigest()[:16]


def cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors stored at ``path`` (safetensors), computing and writing them atomically first if absent.

    The encodings of the frozen VAE and text encoder take minutes on a CPU; caching them lets a resumed or
    continued run start training at once."""
    if path.exists():
        return load_file(path)
    tensors = {k: v.contiguous().cpu() for k, v in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    tmp.replace(path)
    return tensors


def corpus_latents(vae: AutoencoderKL, images: np.ndarray, cache_dir: Path,
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode_latents` of the corpus images, cached under a key of the VAE and the images."""
    path = cache_dir / f"latents_{content_key(vae, images.tobytes())}.safetensors"

    def compute() -> dict[str, torch.Tensor]:
        mean, std = encode_latents(vae, torch.from_numpy(images), device)
        return {"mean": mean, "std": std}

    out = cached(path, compute)
    return out["mean"], out["std"]


def caption_contexts(
    text_encoder: CLIPTextModel, tokenizer, captions: list[str], cache_dir: Path, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts of the distinct captions (float16[U, 77, d]) and each row's index into them (long[N]).

    The corpus repeats captions (200k rows, ~109k distinct), so only distinct ones are encoded, and the result
    is cached under a key of the text encoder and the captions."""
    distinct = sorted(set(captions))
    position = {c: i for i, c in enumerate(distinct)}
    inverse = torch.tensor([position[c] for c in captions])
    path = cache_dir / f"contexts_{content_key(text_encoder, chr(10).join(distinct).encode())}.safetensors"
    out = cached(path, lambda: {"contexts": encode_contexts(text_encoder, tokenize(tokenizer, distinct), device)})
    return out["contexts"], inverse


def attention_targets(rows: list[dict], tokenizer, cache_dir: Path) -> dict[str, torch.Tensor]:
    """`corpus_attention_targets` of the corpus, cached under a key of the rows, the tokenizer's vocabulary
    and the renderer's source (the masks come from re-rendering every row)."""
    key = hashlib.sha256(json.dumps(rows, sort_keys=True).encode())
    key.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    key.update(inspect.getsource(render_module).encode())
    path = cache_dir / f"attention_targets_{key.hexdigest()[:16]}.safetensors"
    return cached(path, lambda: corpus_attention_targets(rows, tokenizer))


def main() -> None:
    """Train, checkpointing and logging; save the pipeline."""
    p = parser(__doc__, PIPELINE_DIR, steps=15000, batch_size=64, lr=5e-4)
    p.add_argument("--components", type=Path, default=PIPELINE_DIR, help="dir holding vae/, text_encoder/, tokenizer/")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--deadline", type=float, default=None, help="unix time: stop early (and save) when passed")
    p.add_argument("--init-from", type=Path, default=None,
                   help="pipeline dir whose unet/ starts a fresh run (continue training shipped weights whose "
                        "checkpoint is gone; pass a new --seed so the batches differ from the first run's)")
    p.add_argument("--mix", type=parse_mix, default=None,
                   help="share of each row group in every batch, e.g. identity=0.5,object=0.3,styled=0.1,pair=0.1 "
                        "(default: uniform over the corpus rows)")
    p.add_argument("--attention-loss", type=float, default=0.0,
                   help="weight of the cross-attention supervision loss (miniworld.attention_supervision); 0: off")
    args = p.parse_args()
    run = start(args, "unet")
    if run.finished(args.steps):
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = args.device
    images, rows = corpus_images(args)
    vae = AutoencoderKL.from_pretrained(str(args.components / "vae")).to(dev).eval()
    text_encoder = CLIPTextModel.from_pretrained(str(args.components / "text_encoder")).to(dev).eval()
    tokenizer = load_tokenizer(args.components / "tokenizer")
    mean, std = (x.to(dev) for x in corpus_latents(vae, images, TRAIN_DIR, dev))
    contexts, row_context = caption_contexts(text_encoder, tokenizer, [r["caption"] for r in rows], TRAIN_DIR, dev)
    contexts, row_context = contexts.to(dev), row_context.to(dev)
    weights = mix_weights(rows, args.mix) if args.mix is not None else None
    if args.attention_loss > 0:
        targets = attention_targets(rows, tokenizer, TRAIN_DIR)
        subject_tokens, subject_masks = targets["tokens"].to(dev), targets["masks"].to(dev)
    empty = encode_contexts(text_encoder, tokenize(tokenizer, [""]), dev)
    scheduler = make_scheduler()
    alphas = scheduler.alphas_cumprod.to(dev)
    unet = make_unet(text_encoder.config.hidden_size).to(dev)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    sched = warmup_cosine(opt, args.steps, 0.03)
    modules = {"model": unet, "ema": ema, "opt": opt, "sched": sched}
    step0 = run.load(modules)
    if step0 == 0 and args.init_from is not None:
        init = UNet2DConditionModel.from_pretrained(str(args.init_from / "unet")).float().state_dict()
        unet.load_state_dict(init)
        ema.load_state_dict(init)
    t0 = run.begin_loop()
    ema_params, params = list(ema.parameters()), list(unet.parameters())
    done = args.steps
    for step in range(step0, args.steps):
        if args.deadline is not None and time.time() > args.deadline:
            run.save(step, modules)
            done = step
            break
        idx = run.batch_indices(step, len(mean), args.batch_size, weights).to(dev)
        g = run.step_generator(step, dev)
        b = len(idx)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g, device=dev)) * vae.config.scaling_factor
        drop = torch.rand(b, generator=g, device=dev) < P_UNCOND
        context = torch.where(drop[:, None, None], empty, contexts[row_context[idx]]).float()
        t = torch.randint(0, len(alphas), (b,), generator=g, device=dev)
        noise = torch.randn(z0.shape, generator=g, device=dev)
        a = alphas[t].view(b, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        if args.attention_loss > 0:
            with AttentionCapture(unet) as capture:
                pred = unet(zt, t, context).sample
            named = subject_tokens[idx] & ~drop[:, None, None]  # an empty caption names nothing
            attention = subject_attention_loss(capture.probs, named, subject_masks[idx])
        else:
            pred, attention = unet(zt, t, context).sample, torch.zeros(())
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=SNR_GAMMA) / snr
        denoise = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        loss = denoise + args.attention_loss * attention
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        if (step + 1) % 100 == 0:
            values = {"loss": denoise.item()} | ({"attention": attention.item()} if args.attention_loss > 0 else {})
            run.log_loss(step + 1, values, time.time() - t0)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            run.save(step + 1, modules)
    pipe = StableDiffusionPipeline(
        vae=vae.to("cpu"),
        text_encoder=text_encoder.to("cpu"),
        tokenizer=tokenizer,
        unet=ema.to("cpu"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(args.out))
    ema.half().save_pretrained(str(args.out / "unet"))  # float16 on disk; loads as float32
    extra = {"batch_size": args.batch_size, "planned_steps": args.steps}
    if args.attention_loss > 0:
        extra["attention_loss"] = args.attention_loss
    if args.mix is not None:
        extra["mix"] = ",".join(f"{k}={v}" for k, v in args.mix.items())
    finish(run, args.out, done, extra)


if __name__ == "__main__":
    main()
