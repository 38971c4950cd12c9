"""Benchmark: where the miniworld's text encoder puts an object class or an identity, and why erasing one hurts others.

For every pair of object classes it compares, through the shipped text encoder, the embedding of the class word
and of the EOS token in "a photo of a <class>". Cross-attention reads every token, so a LoRA or CFR edit that
acts on one class's EOS (and the padding after it, whose embeddings the causal encoder derives from the same
prefix) acts on every class whose EOS is close to it. The objects preset's strong domain prior
(``configs/miniworld-objects.yaml``) answers the closeness measured here.

For the 200 identities it measures the same thing in aggregate: each identity's mean EOS-and-padding embedding
(over a few templates), their mean pairwise cosine, how many directions hold 90 % and 99 % of the variance of
the kept identities (0-99) around the mean, how much of an erased identity's (100-199) deviation a linear
combination of the kept ones explains (R^2; what a linear K/V edit cannot separate; also from only the first K
kept), and how much of the variance an additive first-name + last-name model explains. Finally it asks which
positions the UNet reads an identity from: 20 identities are generated (4 seeds) from their own context with one
span of positions replaced by the anchor prompt's ("a portrait of a person") at the same positions, and the
classifier says how many are still the identity.

Run:  python -m benchmarks.class_tokens   (writes benchmarks/results/class_tokens.{json,md}; ~1 min on 2 cores)
      python -m benchmarks.class_tokens --pipeline <dir> --out <dir>   (any miniworld-format pipeline)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from benchmarks.quality import RESULTS

ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
KEPT_COUNTS = (10, 28, 50, 100)  # the kept identities of benchmarks.tuning's identities_kept runs (and all 100)


@torch.no_grad()
def encode_padded(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's hidden states ``[N, L, d]`` of ``prompts`` padded as in generation, and each prompt's EOS
    position ``[N]`` (BOS ... words EOS: the unpadded length minus one)."""
    tok = pipe.tokenizer
    batch = tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    return pipe.text_encoder(batch.input_ids)[0], batch.attention_mask.sum(1) - 1


def class_token_embeddings(pipe, classes: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{class: (last word-token embedding, EOS embedding)}`` of "a photo of a <class>" (padded as in generation)."""
    h, eos = encode_padded(pipe, [f"a photo of a {c}" for c in classes])
    return {c: (h[i, int(eos[i]) - 1], h[i, int(eos[i])]) for i, c in enumerate(classes)}


IDENTITY_TEMPLATES = ("a photo of {}", "a portrait of {}", "an image of {}", "{} in a picture",
                      "a painting of {}", "a close-up of {}")


@torch.no_grad()
def identity_tail_embeddings(pipe, names: list[str]) -> torch.Tensor:
    """``[len(names), d]`` float64: per identity, the mean over ``IDENTITY_TEMPLATES`` of the mean embedding of the
    EOS token and the padding after it (the positions that carry the whole name through the causal encoder)."""
    out = []
    for name in names:
        h, eos = encode_padded(pipe, [t.format(name) for t in IDENTITY_TEMPLATES])
        out.append(torch.stack([h[k, int(eos[k]):].mean(0) for k in range(len(eos))]).mean(0))
    return torch.stack(out).double()


def identity_geometry(emb: torch.Tensor, names: list[str], kept: int = 100) -> dict[str, float]:
    """Spread of the identities' tail embeddings ``emb`` (rows in ``names`` order; the first ``kept`` are kept)."""
    unit = torch.nn.functional.normalize(emb, dim=1)
    upper = torch.ones(len(names), len(names), dtype=torch.bool).triu(1)
    dev = emb - emb.mean(0)
    energy = torch.linalg.svdvals(dev[:kept]).pow(2)
    cum = energy.cumsum(0) / energy.sum()
    r2_kept = r2_from_rows(dev[:kept], dev[kept:])
    parts = [sorted({n.split()[0] for n in names}), sorted({n.split()[-1] for n in names})]
    onehot = torch.tensor([[float(n.split()[0] == f) for f in parts[0]]
                           + [float(n.split()[-1] == la) for la in parts[1]] for n in names], dtype=torch.float64)
    onehot = onehot - onehot.mean(0)
    fit = onehot @ torch.linalg.lstsq(onehot, dev).solution
    return {"mean_pair_cos": round(unit.matmul(unit.T)[upper].mean().item(), 3),
            "dims_90": int((cum < 0.9).sum()) + 1, "dims_99": int((cum < 0.99).sum()) + 1,
            "erased_r2_from_kept_mean": round(r2_kept.mean().item(), 3),
            "erased_r2_from_kept_min": round(r2_kept.min().item(), 3),
            "name_parts_r2": round(1 - ((fit - dev).pow(2).sum() / dev.pow(2).sum()).item(), 3),
            "erased_r2_by_kept": {k: round(r2_from_rows(dev[:k], dev[kept:]).mean().item(), 3)
                                  for k in KEPT_COUNTS if k <= kept}}


def r2_from_rows(basis: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row of ``targets``: the share (R^2) of it that a least-squares combination of ``basis``'s rows explains."""
    coef = torch.linalg.lstsq(basis.T, targets.T).solution
    resid = (basis.T @ coef - targets.T).pow(2).sum(0)
    return 1 - resid / targets.T.pow(2).sum(0)


CONTEXT_SWAPS = ("none", "name", "tail", "padding", "through_eos")


def swap_context(own: torch.Tensor, anchor: torch.Tensor, name_start: int, eos: int, swap: str) -> torch.Tensor:
    """``own`` ``[L, d]`` with one span of positions taken from ``anchor`` (same positions): ``name`` (the name's
    tokens, ``name_start`` to ``eos - 1``), ``tail`` (EOS and padding), ``padding`` (after EOS), ``through_eos``
    (everything up to and including EOS) or ``none``."""
    spans = {"none": slice(0, 0), "name": slice(name_start, eos), "tail": slice(eos, None),
             "padding": slice(eos + 1, None), "through_eos": slice(0, eos + 1)}
    out = own.clone()
    out[spans[swap]] = anchor[spans[swap]]
    return out


@torch.no_grad()
def identity_reading(pipe, names: list[str], seeds: int = 4) -> dict[str, float]:
    """Classifier identity top-1 of images generated from "a portrait of <name>" with each ``CONTEXT_SWAPS`` span
    replaced by the anchor prompt's (20 sampler steps, guidance 5, as ``miniworld.quality``)."""
    from miniworld.classifier import load_classifier
    from miniworld.prompts import identity_prompt
    from miniworld.quality import top1

    clf = load_classifier()
    own, eos = encode_padded(pipe, [identity_prompt(n) for n in names])
    anchor, _ = encode_padded(pipe, [identity_prompt("a person")] * len(names))
    uncond, _ = encode_padded(pipe, [""] * len(names))
    name_start = len(pipe.tokenizer(identity_prompt("").strip())["input_ids"]) - 1  # BOS + the prefix words
    out = {}
    for swap in CONTEXT_SWAPS:
        ctx = torch.stack([swap_context(own[i], anchor[i], name_start, int(eos[i]), swap) for i in range(len(names))])
        images = torch.stack([pipe(prompt_embeds=ctx, negative_prompt_embeds=uncond, num_inference_steps=20,
                                   guidance_scale=5.0, output_type="pt",
                                   generator=[torch.Generator().manual_seed(s) for _ in names]).images
                              for s in range(seeds)], 1).flatten(0, 1) * 2 - 1  # prompt-major, seed-minor
        out[swap] = round(top1(clf.predict(images)["identity"], clf.labels["identity"], names, seeds), 3)
    return out


def main() -> None:
    from miniworld.paths import PIPELINE_DIR
    from miniworld.quality import load_pipeline
    from miniworld.world import IDENTITIES, OBJECT_CLASSES
    from tasks._cache import files_digest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, default=PIPELINE_DIR, help="miniworld-format pipeline dir to measure")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where class_tokens.{json,md} are written")
    args = ap.parse_args()
    command = "python -m benchmarks.class_tokens"
    if args.pipeline != PIPELINE_DIR:
        command += f" --pipeline {args.pipeline}"
    pipe = load_pipeline(args.pipeline)
    emb = class_token_embeddings(pipe, list(OBJECT_CLASSES))
    rows = []
    for a, b in itertools.combinations(OBJECT_CLASSES, 2):
        rows.append({"a": a, "b": b, "both_animals": a in ANIMALS and b in ANIMALS,
                     "word_cos": round(torch.cosine_similarity(emb[a][0], emb[b][0], 0).item(), 3),
                     "eos_cos": round(torch.cosine_similarity(emb[a][1], emb[b][1], 0).item(), 3)})

    def mean(key: str, animals: bool) -> float:
        values = [r[key] for r in rows if r["both_animals"] == animals]
        return round(sum(values) / len(values), 3)

    summary = {f"{k}_{'animals' if an else 'other'}": mean(k, an)
               for k in ("word_cos", "eos_cos") for an in (True, False)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "model_digest": files_digest(args.pipeline),
              "summary": summary, "rows": rows, "command": command,
              "identities": identity_geometry(identity_tail_embeddings(pipe, list(IDENTITIES)), list(IDENTITIES))}
    ids = result["identities"]
    result["identity_reading"] = reads = identity_reading(pipe, list(IDENTITIES[100:200:5]))
    # the same figures for 200 random Gaussian vectors of the same width: what "no structure" scores
    width = emb[OBJECT_CLASSES[0]][1].numel()
    noise = torch.randn(len(IDENTITIES), width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result["identities_random_baseline"] = rnd = identity_geometry(noise, list(IDENTITIES))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "class_tokens.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["# Object classes and identities in the text encoder", "", "## Object classes: word and EOS embeddings", "",
          f"`{result['command']}` ({result['date']}, model {result['model_digest'][:12]}). Cosine similarity of the "
          "class word's and the EOS token's embeddings in \"a photo of a <class>\", for each pair of classes.", "",
          f"Mean over pairs of animals ({', '.join(ANIMALS)}): word {summary['word_cos_animals']}, EOS "
          f"{summary['eos_cos_animals']}. Other pairs: word {summary['word_cos_other']}, "
          f"EOS {summary['eos_cos_other']}.",
          "", "| a | b | word cos | EOS cos |", "|---|---|---|---|"]
    md += [f"| {r['a']} | {r['b']} | {r['word_cos']} | {r['eos_cos']} |" for r in rows]
    md += ["", "## Identities: EOS and padding embeddings", "",
           f"Per identity, the mean embedding of the EOS token and the padding after it, averaged over "
           f"{len(IDENTITY_TEMPLATES)} templates. Mean pairwise cosine of the 200: {ids['mean_pair_cos']}. "
           f"Around their mean, the 100 kept identities (0-99) vary in {ids['dims_90']} directions for 90 % of the "
           f"energy and {ids['dims_99']} for 99 % (of {width}). A linear combination of the kept deviations "
           f"explains on average {ids['erased_r2_from_kept_mean']} (at least {ids['erased_r2_from_kept_min']}) of "
           f"an erased identity's (100-199) deviation, so a linear edit of the cross-attention projections that "
           f"moves an erased identity moves a combination of kept ones with it, unless the prior holds them. An "
           f"additive first-name + last-name model explains {ids['name_parts_r2']} of the variance.", "",
           f"200 random Gaussian vectors of width {width}, for comparison: mean pairwise cosine "
           f"{rnd['mean_pair_cos']}, {rnd['dims_90']} / {rnd['dims_99']} directions for 90 / 99 %, "
           f"R^2 from the first 100 {rnd['erased_r2_from_kept_mean']}, name-part model {rnd['name_parts_r2']}.",
           "", "Mean R^2 of an erased identity's deviation from the first K kept ones (the kept sets of `python -m "
           "benchmarks.tuning --suite identities_kept --count K`):", "",
           "| K kept | tails | random vectors |", "|---|---|---|",
           *[f"| {k} | {v} | {rnd['erased_r2_by_kept'][k]} |" for k, v in ids["erased_r2_by_kept"].items()],
           "", "## Identities: which positions the UNet reads", "",
           "Identity top-1 of 20 identities (100, 105, ..., 195; 4 seeds) generated from \"a portrait of <name>\" "
           "with one span of the context replaced by that of \"a portrait of a person\" at the same positions:", "",
           "| replaced | identity top-1 |", "|---|---|",
           *[f"| {k} | {v} |" for k, v in reads.items()]]
    (args.out / "class_tokens.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:6]))


if __name__ == "__main__":
    main()
