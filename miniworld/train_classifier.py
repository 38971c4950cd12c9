"""Train the evaluation classifier on renderer ground truth: ``python -m miniworld.train_classifier``.

Inputs are corpus renders (single-subject), half of each batch passed through the trained VAE
(so that decoded, generated images are in distribution) and all with a little Gaussian noise.
Writes held-out accuracies per head (clean renders and VAE round trips) to ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from miniworld.classifier import MiniworldClassifier
from miniworld.corpus import render_table
from miniworld.paths import CLASSIFIER_DIR, HELDOUT_CAPTIONS_PATH, PIPELINE_DIR
from miniworld.training import warmup_cosine, corpus_images, corpus_labels, finish, parser, start, to_float
from miniworld.world import HEADS


@torch.no_grad()
def vae_roundtrip(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Encode (posterior mean) and decode a float[B, 3, 32, 32] batch."""
    return vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)


@torch.no_grad()
def heldout_accuracy(model: MiniworldClassifier, vae: AutoencoderKL, device: str,
                     workers: int) -> dict[str, dict[str, float]]:
    """Top-1 accuracy per head on held-out single-subject renders, clean and VAE round-tripped."""
    table = pq.read_table(HELDOUT_CAPTIONS_PATH)
    rows = table.to_pylist()
    x_all = to_float(torch.from_numpy(render_table(table, workers)))
    targets = corpus_labels(rows, tuple(HEADS))
    keep = targets["kind"] >= 0
    model.eval()
    out: dict[str, dict[str, float]] = {}
    for name in ("clean", "vae"):
        preds: dict[str, list[torch.Tensor]] = {h: [] for h in HEADS}
        for i in range(0, len(x_all), 500):
            x = x_all[i : i + 500].to(device)
            x = vae_roundtrip(vae, x) if name == "vae" else x
            for h, logits in model(x).items():
                preds[h].append(logits.argmax(1).cpu())
        acc = {}
        for h in HEADS:
            p, t = torch.cat(preds[h])[keep], targets[h][keep]
            valid = t >= 0
            acc[h] = round((p[valid] == t[valid]).float().mean().item(), 4)
        out[name] = acc
    return out


def main() -> None:
    """Train, evaluate on the held-out set and save."""
    p = parser(__doc__, CLASSIFIER_DIR, steps=3000, batch_size=256, lr=2e-3)
    p.add_argument("--vae", type=Path, default=PIPELINE_DIR / "vae")
    args = p.parse_args()
    run = start(args, "classifier")
    if run.finished(args.steps):
        return
    images, rows = corpus_images(args)
    targets = {h: v.to(args.device) for h, v in corpus_labels(rows, tuple(HEADS)).items()}
    single = torch.nonzero(targets["kind"] >= 0).squeeze(1)
    data = torch.from_numpy(images).to(args.device)
    vae = AutoencoderKL.from_pretrained(str(args.vae)).to(args.device).eval()
    model = MiniworldClassifier().to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = warmup_cosine(opt, args.steps, 0.05)
    modules = {"model": model, "opt": opt, "sched": sched}
    step0 = run.load(modules)
    t0 = run.begin_loop()
    for step in range(step0, args.steps):
        model.train()
        idx = single[run.batch_indices(step, len(single), args.batch_size).to(args.device)]
        x = to_float(data[idx])
        half = len(idx) // 2
        x = torch.cat([vae_roundtrip(vae, x[:half]), x[half:]])
        g = run.step_generator(step, args.device)
        sigma = 0.08 * torch.rand(len(x), 1, 1, 1, generator=g, device=args.device)
        x = x + sigma * torch.randn(x.shape, generator=g, device=args.device)
        logits = model(x)
        losses = {h: F.cross_entropy(logits[h], targets[h][idx], ignore_index=-100) for h in HEADS}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            run.log_loss(step + 1, {"loss": loss.item()} | {h: v.item() for h, v in losses.items()}, time.time() - t0)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            run.save(step + 1, modules)
    metrics = heldout_accuracy(model, vae, args.device, args.workers)
    model.to("cpu").save(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    finish(run, args.out, args.steps, {"heldout_accuracy": metrics})


if __name__ == "__main__":
    main()
