"""Train the miniworld autoencoder: ``python -m miniworld.train_vae --device cuda``.

Loss: L1 + MSE reconstruction of corpus renders plus a small KL term; at the end the latent
scaling factor is set to 1 / std of the latents (as Stable Diffusion's 0.18215 was chosen).
"""

from __future__ import annotations

import time

import torch

from miniworld.models import make_vae
from miniworld.paths import PIPELINE_DIR
from miniworld.training import warmup_cosine, corpus_images, finish, parser, start, to_float

KL_WEIGHT = 1e-6


def main() -> None:
    """Train, checkpointing and logging as it goes; save in diffusers format to --out."""
    p = parser(__doc__, PIPELINE_DIR / "vae", steps=3000, batch_size=64, lr=1e-3)
    args = p.parse_args()
    run = start(args, "vae")
    if run.finished(args.steps):
        return
    images, _ = corpus_images(args)
    data = torch.from_numpy(images).to(args.device)
    vae = make_vae().to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, args.steps, 0.05)
    modules = {"model": vae, "opt": opt, "sched": sched}
    step0 = run.load(modules)
    t0 = run.begin_loop()
    for step in range(step0, args.steps):
        x = to_float(data[run.batch_indices(step, len(data), args.batch_size).to(args.device)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=run.step_generator(step, args.device),
                                               device=args.device)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + mse + KL_WEIGHT * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            run.log_loss(step + 1, {"loss": loss.item(), "l1": l1.item(), "mse": mse.item(), "kl": kl.item()},
                         time.time() - t0)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            run.save(step + 1, modules)
    vae.eval()
    with torch.no_grad():
        x = to_float(data[run.batch_indices(10**9, len(data), 2048).to(args.device)])
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.to("cpu").save_pretrained(str(args.out))
    finish(run, args.out, args.steps, {"latent_std": std})


if __name__ == "__main__":
    main()
