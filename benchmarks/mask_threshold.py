"""Benchmark: the attention masker's threshold, scored against the renderer's ground-truth masks.

The default masker (``mace_core.masks.attention_masks``) thresholds each smoothed, min-max-normalised saliency
map relative to its peak. This measures, on held-out single-object miniworld renders prompted with their own
class, the IoU with the renderer's masks and the mask area at several thresholds, next to two baselines that
ignore the image: the mean truth mask thresholded at 0.5 (``constant``) and another render's truth
(``mismatched``, at each threshold). ``masks.attention_threshold``'s default was chosen from this table.

Run:  python -m benchmarks.mask_threshold [--n 64]   (writes benchmarks/results/mask_threshold.{json,md}; ~1 min)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.quality import RESULTS

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def main() -> None:
    from mace_core.masks import attention_saliency, mask_iou, smooth_saliency
    from miniworld.prompts import object_prompt
    from miniworld.quality import _heldout_renders, _images, _masks, load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="held-out single-object renders")
    args = ap.parse_args()
    pipe = load_pipeline()
    picked, renders = _heldout_renders(args.n, 1)
    concepts = [s.subjects[0].name for _, s in picked]
    # the masker's own steps (attention_masks): saliency, 3-pixel box smoothing, renormalisation, threshold
    smooth = smooth_saliency(attention_saliency(pipe, _images(renders), [object_prompt(c) for c in concepts],
                                                concepts, torch.Generator().manual_seed(0)), 3)
    truth = _masks(renders, 0)
    constant = (truth.mean(0, keepdim=True) >= 0.5).float().expand_as(truth)
    rows = []
    for t in THRESHOLDS:
        pred = (smooth >= t).float()
        rows.append({"threshold": t, "iou": round(mask_iou(pred, truth).mean().item(), 4),
                     "mismatched_iou": round(mask_iou(pred, truth.roll(1, 0)).mean().item(), 4),
                     "area": round(pred.mean().item(), 4)})
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "n": len(picked), "rows": rows,
              "truth_area": round(truth.mean().item(), 4),
              "constant_iou": round(mask_iou(constant, truth).mean().item(), 4),
              "command": f"python -m benchmarks.mask_threshold --n {args.n}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mask_threshold.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["# Attention masker: IoU with the renderer's masks vs threshold", "",
          f"`{result['command']}` ({result['date']}): {result['n']} held-out single-object renders; mean truth "
          f"area {result['truth_area']}; a constant mask (mean truth >= 0.5) scores IoU {result['constant_iou']}.",
          "", "| threshold | IoU | IoU with another render's truth | mask area |", "|---|---|---|---|"]
    md += [f"| {r['threshold']} | {r['iou']} | {r['mismatched_iou']} | {r['area']} |" for r in rows]
    (RESULTS / "mask_threshold.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
