"""Train the tiny CLIP contrastively on corpus renders + captions: ``python -m miniworld.train_clip``.

Besides the symmetric InfoNCE loss, linear heads on both towers' projected embeddings predict the
renderer's labels (object, colour, scene, style, identity): this auxiliary loss makes sure every
identity and style name gets its own direction in the text embedding, which the UNet then reads.
Saves the whole CLIPModel (float16) to --out and its text tower as the pipeline's text_encoder.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from miniworld.models import IMAGE_DIM, TEXT_DIM, make_clip
from miniworld.paths import CLIP_DIR, PIPELINE_DIR
from miniworld.tokenizer import load_tokenizer
from miniworld.training import warmup_cosine, corpus_images, corpus_labels, finish, parser, start, to_float
from miniworld.world import HEADS

AUX_HEADS = ("object", "colour", "scene", "style", "identity")
# The shipped CLIP was trained when only monochrome left an object's colour undefined (sepia joined
# world.HUE_FREE_PALETTES later, in the classifier's label fix). Its auxiliary colour targets keep that set so that
# train_all.sh reproduces the shipped weights bit for bit; the aux heads only shape the embedding during training.
SHIPPED_CLIP_HUE_FREE = frozenset({"monochrome"})


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Pad/truncate to 77 tokens exactly as StableDiffusionPipeline does: LongTensor[N, 77]."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return ids.input_ids


def main() -> None:
    """Train and save."""
    p = parser(__doc__, CLIP_DIR, steps=3000, batch_size=256, lr=1e-3)
    p.add_argument("--text-encoder-out", type=Path, default=PIPELINE_DIR / "text_encoder")
    p.add_argument("--tokenizer", type=Path, default=PIPELINE_DIR / "tokenizer")
    p.add_argument("--text-dim", type=int, default=TEXT_DIM,
                   help="width of the text tower, which the UNet and every later stage read from its config")
    args = p.parse_args()
    run = start(args, "clip")
    if run.finished(args.steps):
        return
    images, rows = corpus_images(args)
    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenize(tokenizer, [r["caption"] for r in rows])
    # The text tower is causal and pooled at the first EOS, so positions after the longest caption's EOS
    # cannot change the loss: dropping them is exact and ~3x cheaper than training on all 77.
    ids = ids[:, : int((ids == tokenizer.eos_token_id).int().argmax(1).max()) + 1].to(args.device)
    targets = {h: v.to(args.device) for h, v in corpus_labels(rows, AUX_HEADS, SHIPPED_CLIP_HUE_FREE).items()}
    data = torch.from_numpy(images).to(args.device)
    clip = make_clip(len(tokenizer), args.text_dim).to(args.device)
    heads = torch.nn.ModuleDict(
        {f"{tower}_{h}": torch.nn.Linear(IMAGE_DIM, len(HEADS[h])) for tower in ("text", "image") for h in AUX_HEADS}
    ).to(args.device)
    params = list(clip.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    sched = warmup_cosine(opt, args.steps, 0.05)
    modules = {"model": clip, "heads": heads, "opt": opt, "sched": sched}
    step0 = run.load(modules)
    t0 = run.begin_loop()
    for step in range(step0, args.steps):
        idx = run.batch_indices(step, len(data), args.batch_size).to(args.device)
        out = clip(input_ids=ids[idx], pixel_values=to_float(data[idx]))
        labels = torch.arange(len(idx), device=args.device)
        contrastive = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
        aux = sum(
            F.cross_entropy(heads[f"{tower}_{h}"](emb), targets[h][idx], ignore_index=-100)
            for tower, emb in (("text", out.text_embeds), ("image", out.image_embeds))
            for h in AUX_HEADS
        )
        loss = contrastive + aux / len(AUX_HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            acc = (out.logits_per_image.argmax(1) == labels).float().mean().item()
            run.log_loss(step + 1,
                         {"loss": loss.item(), "contrastive": contrastive.item(), "aux": aux.item(),
                          "i2t_acc": acc}, time.time() - t0)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            run.save(step + 1, modules)
    clip = clip.to("cpu").eval()
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.save_pretrained(str(args.text_encoder_out))
    clip.half().save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    finish(run, args.out, args.steps)


if __name__ == "__main__":
    main()
