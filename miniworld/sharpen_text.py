"""Sharpen the pipeline's text encoder so that it tells every subject name apart:
``python -m miniworld.sharpen_text``.

Why: the tiny CLIP's text tower, trained contrastively on 32x32 renders, maps the four-legged animals almost
onto one point (the hidden state of "cat", "dog" and "horse" in "a photo of a cat" agree to a cosine of
0.99+), so the UNet cannot draw the one it is asked for: with one seed, the three prompts give the same
picture. This fine-tune moves the words that name a subject apart and leaves every other position where it
was, so the UNet trained on the old encoder keeps working and only has to learn the new directions:

    L = CE(s * cos(f_k, W), y_k)  +  distill * mean over non-subject positions of ||h - h_teacher||^2

with ``f_k`` the mean hidden state over the caption tokens naming subject ``k`` (the attention-supervision
token masks), ``y_k`` its object class (synonyms count as their class) or identity, ``W`` one learned
prototype per class and identity, and ``h_teacher`` the frozen starting encoder. Only the pipeline's
``text_encoder/`` changes; the CLIP scorer in ``weights/clip`` keeps its own text tower.

``--tail-weight w`` adds ``w * CE(s * cos(t, W_tail), y)`` for captions with one subject, ``t`` the mean hidden
state of the EOS token and the padding after it, and frees those positions from the distillation. Why: MACE's
CFR remaps exactly these positions, and the starting encoder puts all 200 identities' tails in about 10
directions (``benchmarks/class_tokens.md``), so no linear edit can move 100 of them and keep the other 100.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from miniworld.corpus import spec_of
from miniworld.paths import PIPELINE_DIR, TRAIN_DIR
from miniworld.prompts import object_prompt
from miniworld.render import Subject
from miniworld.tokenizer import load_tokenizer
from miniworld.train_clip import tokenize
from miniworld.train_unet import attention_targets
from miniworld.training import corpus_images, finish, parser, start, warmup_cosine
from miniworld.world import IDENTITIES, OBJECT_CLASSES

SUBJECT_NAMES = (*OBJECT_CLASSES, *IDENTITIES)


def subject_label(subject: Subject) -> int:
    """Index of a subject's class (objects) or identity in SUBJECT_NAMES."""
    return SUBJECT_NAMES.index(subject.name)


def subject_labels(rows: list[dict]) -> torch.Tensor:
    """long[N, 2]: each row's subjects' SUBJECT_NAMES indices (-100 for an absent second subject)."""
    out = torch.full((len(rows), 2), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        for k, subject in enumerate(spec_of(row).subjects):
            out[i, k] = subject_label(subject)
    return out


def eos_positions(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """long[B]: the position of each caption's first EOS token."""
    return (ids == eos_token_id).int().argmax(-1)


def tail_mask(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """bool[B, L]: each caption's EOS token and every position after it (padding)."""
    return torch.arange(ids.shape[1], device=ids.device)[None] >= eos_positions(ids, eos_token_id)[:, None]


def tail_features(hidden: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """float[B, d]: the mean hidden state over each caption's tail positions."""
    weights = tail.float()
    return torch.einsum("bl,bld->bd", weights, hidden) / weights.sum(1, keepdim=True).clamp(min=1)


def subject_features(hidden: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean hidden state over each subject's tokens: float[B, K, d], and bool[B, K] (the subject has tokens)."""
    weights = tokens.float()
    count = weights.sum(-1)
    feats = torch.einsum("bkl,bld->bkd", weights, hidden) / count.clamp(min=1)[..., None]
    return feats, count > 0


@torch.no_grad()
def class_word_similarity(text_encoder: CLIPTextModel, tokenizer) -> torch.Tensor:
    """float[10, 10]: cosine between the class words' hidden states in the object-quality prompts."""
    ids = tokenize(tokenizer, [object_prompt(c) for c in OBJECT_CLASSES])
    hidden = text_encoder(ids).last_hidden_state
    rows = []
    for i, c in enumerate(OBJECT_CLASSES):
        n = len(tokenizer(c, add_special_tokens=False).input_ids)
        end = int(eos_positions(ids[i], tokenizer.eos_token_id))
        rows.append(hidden[i, end - n : end].mean(0))
    f = F.normalize(torch.stack(rows), dim=-1)
    return f @ f.T


@torch.no_grad()
def context_drift(student: CLIPTextModel, teacher: CLIPTextModel, ids: torch.Tensor) -> float:
    """Mean squared change of the full 77-position context the UNet reads, relative to the teacher's
    per-element variance (0: unchanged; 1: as large as the context itself)."""
    new, old = student(ids).last_hidden_state, teacher(ids).last_hidden_state
    return float(((new - old) ** 2).mean() / old.var())


def max_confusion(similarity: torch.Tensor) -> float:
    """The largest off-diagonal entry of a similarity matrix."""
    return float((similarity - 2 * torch.eye(len(similarity))).max())


def main() -> None:
    """Fine-tune, checkpointing and logging; save the text encoder into the pipeline."""
    p = parser(__doc__, PIPELINE_DIR / "text_encoder", steps=1500, batch_size=256, lr=2e-4)
    p.add_argument("--components", type=Path, default=PIPELINE_DIR,
                   help="pipeline dir holding text_encoder/, tokenizer/")
    p.add_argument("--distill", type=float, default=10.0, help="weight of keeping the non-subject positions unchanged")
    p.add_argument("--scale", type=float, default=16.0, help="cosine-softmax scale s")
    p.add_argument("--tail-weight", type=float, default=0.0,
                   help="weight of telling one-subject captions apart by their EOS-and-padding tail (0: off)")
    args = p.parse_args()
    run = start(args, "sharpen_text")
    if run.finished(args.steps):
        return
    _, rows = corpus_images(args)
    tokenizer = load_tokenizer(args.components / "tokenizer")
    ids = tokenize(tokenizer, [r["caption"] for r in rows])
    # The tower is causal: positions after the longest caption's EOS never influence earlier ones, so
    # training on the first `length` positions is ~3x cheaper; `context_drift` checks all 77 at the end.
    length = int(eos_positions(ids, tokenizer.eos_token_id).max()) + 1
    tokens = attention_targets(rows, tokenizer, TRAIN_DIR)["tokens"][:, :, :length]
    full_ids, ids = ids, ids[:, :length]
    labels = subject_labels(rows)
    student = CLIPTextModel.from_pretrained(str(args.components / "text_encoder")).float().to(args.device)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    similarity_before = class_word_similarity(teacher, tokenizer)
    width = student.config.hidden_size
    prototypes = torch.nn.Parameter(torch.randn(len(SUBJECT_NAMES), width, device=args.device))
    heads = {"prototypes": torch.nn.ParameterList([prototypes])}
    if args.tail_weight:  # the default run creates no tail state, so it draws and checkpoints as before
        tail_prototypes = torch.nn.Parameter(torch.randn(len(SUBJECT_NAMES), width, device=args.device))
        heads["tail_prototypes"] = torch.nn.ParameterList([tail_prototypes])
    params = list(student.parameters()) + [h[0] for h in heads.values()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, args.steps, 0.05)
    modules = {"model": student, **heads, "opt": opt, "sched": sched}
    step0 = run.load(modules)
    t0 = run.begin_loop()
    for step in range(step0, args.steps):
        idx = run.batch_indices(step, len(rows), args.batch_size)
        batch_ids, batch_tokens = ids[idx].to(args.device), tokens[idx].to(args.device)
        hidden = student(batch_ids).last_hidden_state
        with torch.no_grad():
            target = teacher(batch_ids).last_hidden_state
        feats, named = subject_features(hidden, batch_tokens)
        wanted = labels[idx].to(args.device)[named]
        logits = args.scale * F.normalize(feats[named], dim=-1) @ F.normalize(prototypes, dim=-1).T
        classify = F.cross_entropy(logits, wanted)
        keep = ~batch_tokens.any(1)
        tail_loss = torch.zeros((), device=args.device)
        if args.tail_weight:
            single = named[:, 0] & ~named[:, 1]
            tail = tail_mask(batch_ids, tokenizer.eos_token_id) & single[:, None]
            tail_feats = F.normalize(tail_features(hidden, tail)[single], dim=-1)
            tail_logits = args.scale * tail_feats @ F.normalize(tail_prototypes, dim=-1).T
            tail_loss = F.cross_entropy(tail_logits, labels[idx].to(args.device)[single, 0])
            keep &= ~tail
        distill = ((hidden - target) ** 2).mean(-1)[keep].mean()
        loss = classify + args.tail_weight * tail_loss + args.distill * distill
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0:
            acc = (logits.argmax(1) == wanted).float().mean().item()
            run.log_loss(step + 1,
                         {"classify": classify.item(), "tail": tail_loss.item(), "distill": distill.item(), "acc": acc},
                         time.time() - t0)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            run.save(step + 1, modules)
    student = student.to("cpu").eval()
    similarity_after = class_word_similarity(student, tokenizer)
    drift = context_drift(student, teacher.to("cpu"),
                          full_ids[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:2048]])
    student.save_pretrained(str(args.out))
    extra = {
        "batch_size": args.batch_size,
        "distill": args.distill,
        "scale": args.scale,
        "tail_weight": args.tail_weight,
        "class_word_max_cosine_before": round(max_confusion(similarity_before), 4),
        "class_word_max_cosine_after": round(max_confusion(similarity_after), 4),
        "context_drift": round(drift, 4),
    }
    finish(run, args.out, args.steps, extra)
    print(json.dumps(extra))


if __name__ == "__main__":
    main()
