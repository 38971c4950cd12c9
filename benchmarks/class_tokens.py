"""Benchmark: where the miniworld's text encoder puts an object class, and why erasing one animal hurts the others.

For every pair of object classes it compares, through the shipped text encoder, the embedding of the class word
and of the EOS token in "a photo of a <class>". Cross-attention reads every token, so a LoRA or CFR edit that
acts on one class's EOS (and the padding after it, whose embeddings the causal encoder derives from the same
prefix) acts on every class whose EOS is close to it. The objects preset's strong domain prior
(``configs/miniworld-objects.yaml``) answers the closeness measured here.

Run:  python -m benchmarks.class_tokens   (writes benchmarks/results/class_tokens.{json,md}; ~10 s)
"""

from __future__ import annotations

import itertools
import json
import time

import torch

from benchmarks.quality import RESULTS

ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")


def class_token_embeddings(pipe, classes: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{class: (last word-token embedding, EOS embedding)}`` of "a photo of a <class>" (padded as in generation)."""
    tok, enc = pipe.tokenizer, pipe.text_encoder
    out = {}
    for c in classes:
        prompt = f"a photo of a {c}"
        batch = tok(prompt, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
        eos = int(batch.attention_mask.sum()) - 1  # BOS ... word EOS: the unpadded length minus one
        with torch.no_grad():
            h = enc(batch.input_ids)[0][0]
        out[c] = (h[eos - 1], h[eos])
    return out


def main() -> None:
    from miniworld.paths import PIPELINE_DIR
    from miniworld.quality import load_pipeline
    from miniworld.world import OBJECT_CLASSES
    from tasks._cache import files_digest

    emb = class_token_embeddings(load_pipeline(), list(OBJECT_CLASSES))
    rows = []
    for a, b in itertools.combinations(OBJECT_CLASSES, 2):
        rows.append({"a": a, "b": b, "both_animals": a in ANIMALS and b in ANIMALS,
                     "word_cos": round(torch.cosine_similarity(emb[a][0], emb[b][0], 0).item(), 3),
                     "eos_cos": round(torch.cosine_similarity(emb[a][1], emb[b][1], 0).item(), 3)})

    def mean(key: str, animals: bool) -> float:
        values = [r[key] for r in rows if r["both_animals"] == animals]
        return round(sum(values) / len(values), 3)

    summary = {f"{k}_{'animals' if an else 'other'}": mean(k, an) for k in ("word_cos", "eos_cos") for an in (True, False)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "model_digest": files_digest(PIPELINE_DIR),
              "summary": summary, "rows": rows, "command": "python -m benchmarks.class_tokens"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "class_tokens.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["# Object classes in the text encoder: word and EOS embeddings", "",
          f"`{result['command']}` ({result['date']}, model {result['model_digest'][:12]}). Cosine similarity of the "
          "class word's and the EOS token's embeddings in \"a photo of a <class>\", for each pair of classes.", "",
          f"Mean over pairs of animals ({', '.join(ANIMALS)}): word {summary['word_cos_animals']}, EOS "
          f"{summary['eos_cos_animals']}. Other pairs: word {summary['word_cos_other']}, EOS {summary['eos_cos_other']}.",
          "", "| a | b | word cos | EOS cos |", "|---|---|---|---|"]
    md += [f"| {r['a']} | {r['b']} | {r['word_cos']} | {r['eos_cos']} |" for r in rows]
    (RESULTS / "class_tokens.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:6]))


if __name__ == "__main__":
    main()
