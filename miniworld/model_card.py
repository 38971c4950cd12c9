"""Write the model card of the shipped weights: ``python -m miniworld.model_card``.

Reads what training and measurement wrote (``_train/<model>/summary.json`` and ``loss.csv``,
``train_classifier``'s ``metrics.json``, ``miniworld.quality``'s ``quality.json``), copies the loss curves
next to the weights (``weights/logs/``, plotted in ``weights/logs/loss_curves.png``) and writes
``weights/README.md``. Every figure in the card comes from those files: nothing is typed in by hand.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

from miniworld.paths import CLASSIFIER_DIR, TRAIN_DIR, WEIGHTS_DIR
from miniworld.world import HUE_FREE_PALETTES

MODELS = ("vae", "clip", "sharpen_text", "sharpen_tail", "classifier", "unet")
# train_all.sh runs these two at once, one thread each: the elapsed time counts the longer
SIDE_BY_SIDE = ("vae", "clip")
PLOTTED = {"sharpen_text": "classify", "sharpen_tail": "tail"}  # the loss column drawn per model (default "loss")
TARGETS = {"object_top1": 0.90, "synonym_top1": 0.80, "identity_top1": 0.85, "style_top1": 0.85}


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def copy_logs(logs: Path) -> dict[str, dict]:
    """Copy each model's loss.csv + summary.json into ``logs``; return the summaries."""
    logs.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for m in MODELS:
        for name in ("loss.csv", "summary.json"):
            src = TRAIN_DIR / m / name
            if src.exists():
                shutil.copy(src, logs / f"{m}_{name}")
        if (logs / f"{m}_summary.json").exists():
            summaries[m] = json.loads((logs / f"{m}_summary.json").read_text())
    return summaries


def run_seconds(summary: dict) -> float:
    """One model's measured cost: its training loop plus the setup before it (loading, caches)."""
    return summary.get("wall_seconds", 0.0) + summary.get("setup_seconds", 0.0)


def elapsed_seconds(summaries: dict[str, dict]) -> float:
    """Elapsed time of the whole chain on the 2-core machine: the side-by-side models count once (the longer)."""
    together = [run_seconds(s) for m, s in summaries.items() if m in SIDE_BY_SIDE]
    alone = [run_seconds(s) for m, s in summaries.items() if m not in SIDE_BY_SIDE]
    return sum(alone) + max(together, default=0.0)


def plot_losses(logs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [m for m in MODELS if (logs / f"{m}_loss.csv").exists()]  # a TEXT_ONLY world has no VAE/classifier log
    fig, axes = plt.subplots(1, len(trained), figsize=(3.2 * len(trained), 2.6), squeeze=False)
    for ax, m in zip(axes[0], trained, strict=True):
        rows = list(csv.DictReader((logs / f"{m}_loss.csv").open()))
        column = PLOTTED.get(m, "loss")
        ax.plot([int(r["step"]) for r in rows], [float(r[column]) for r in rows])
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(logs / "loss_curves.png", dpi=100)


def loss_trend(path: Path, window: int = 10) -> tuple[float, float] | None:
    """Mean loss of the last ``window`` logged points and of the ``window`` before them (None: too few)."""
    if not path.exists():
        return None
    losses = [float(r["loss"]) for r in csv.DictReader(path.open())]
    if len(losses) < 2 * window:
        return None
    return statistics.fmean(losses[-2 * window:-window]), statistics.fmean(losses[-window:])


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    logs = WEIGHTS_DIR / "logs"
    summaries = copy_logs(logs)
    plot_losses(logs)
    quality_path = WEIGHTS_DIR / "quality" / "quality.json"
    quality = json.loads(quality_path.read_text()) if quality_path.exists() else None
    metrics_path = CLASSIFIER_DIR / "metrics.json"
    clf = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    lines = ["# miniworld weights: model card\n",
             "A small text-to-image world trained by this project on its procedural renderer "
             "(32x32 images, `miniworld/render.py`) and caption grammar (200k captions, `miniworld/data/`). "
             "The pipeline directory loads with "
             "`StableDiffusionPipeline.from_pretrained('miniworld/weights/pipeline')`.\n",
             "## Components and sizes\n", "| part | directory | MB |", "|---|---|---|"]
    width = json.loads((WEIGHTS_DIR / "pipeline" / "text_encoder" / "config.json").read_text())["hidden_size"]
    for part, d in (("VAE (32x32x3 <-> 8x8x4)", "pipeline/vae"),
                    (f"CLIP text tower (4 layers, d={width})", "pipeline/text_encoder"),
                    ("UNet (64/128 channels, cross-attention at 8x8 and 4x4, fp16 on disk)", "pipeline/unet"),
                    ("tokenizer + scheduler (DPM-Solver++)", "pipeline/tokenizer"),
                    ("full CLIP (text + image towers, fp16)", "clip"),
                    ("evaluation classifier (object/colour/scene/style/identity heads)", "classifier")):
        lines.append(f"| {part} | `{d}` | {_size_mb(WEIGHTS_DIR / d):.2f} |")
    lines.append(f"| **total** (everything under `miniworld/weights/`) | | {_size_mb(WEIGHTS_DIR):.2f} |\n")
    lines += ["## Training (2 CPU cores)\n", "| model | steps | wall seconds | setup seconds | notes |",
              "|---|---|---|---|---|"]
    for m, s in summaries.items():
        skip = ("steps", "wall_seconds", "setup_seconds", "heldout_accuracy")
        notes = ", ".join(f"{k}={v}" for k, v in s.items() if k not in skip)
        lines.append(f"| {m} | {s.get('steps')} | {s.get('wall_seconds')} | {s.get('setup_seconds', '-')} | {notes} |")
    total = sum(run_seconds(s) for s in summaries.values())
    lines.append(f"\nElapsed on the 2-core machine: **{elapsed_seconds(summaries) / 3600:.2f} h** "
                 f"({' and '.join(SIDE_BY_SIDE)} side by side, one thread each, counted once; then each model alone, "
                 "the text-encoder sharpening and "
                 f"the UNet and the classifier with two threads); sum of the per-model times: {total / 3600:.2f} h. "
                 "Setup is the time before the training loop (loading, corpus render, latent and context caches); "
                 "'-' where a run predates its recording. Loss curves: `logs/*_loss.csv`, "
                 "plotted in `logs/loss_curves.png`.\n")
    lines.append("Reproduce (deterministic, resumable from `miniworld/_train/<model>/checkpoint.pt`): "
                 "`bash miniworld/train_all.sh [UNET_STEPS] [UNET_DEADLINE_UNIX_TIME]`, one command per model "
                 "inside it (`python -m miniworld.train_{vae,clip,classifier,unet}`, "
                 "`python -m miniworld.sharpen_text`; `--device cuda` on a GPU).\n")
    if clf:
        lines += ["## Classifier on held-out renders (top-1)\n", "| head | clean renders | after a VAE round trip |",
                  "|---|---|---|"]
        for head in clf.get("clean", {}):
            lines.append(f"| {head} | {clf['clean'][head]:.4f} | {clf.get('vae', {}).get(head, float('nan')):.4f} |")
        lines.append("\nHeld-out single-subject renders (`miniworld/data/`); "
                     "a head is scored where its label is defined: colour is undefined for identities "
                     "and under the palettes that keep luma only "
                     f"({', '.join(sorted(HUE_FREE_PALETTES))}, `world.HUE_FREE_PALETTES`).\n")
    if quality:
        f = quality["figures"]
        lines += ["## Generation quality (the classifier on generated images)\n",
                  "Command: `python -m miniworld.quality --out miniworld/weights/quality`; "
                  f"{quality['seeds_per_prompt']} seeds per prompt, {quality['steps']} sampler steps, "
                  f"guidance {quality['guidance_scale']}, "
                  f"{quality['device']} with {quality['torch_threads']} threads.\n",
                  "| figure | measured | target | met |", "|---|---|---|---|"]
        for k, target in TARGETS.items():
            lines.append(f"| {k} | {f[k]:.3f} | >= {target} | {'yes' if f[k] >= target else '**no**'} |")
        if "identity_shape_match" in f:
            lines.append("| identity: emblem shape / foreground / background as prompted | "
                         f"{f['identity_shape_match']:.3f} / {f['identity_fg_match']:.3f} / "
                         f"{f['identity_bg_match']:.3f} | (diagnostic) | |")
        s8 = f["seconds_for_8_images"]
        lines.append(f"| seconds for 8 images | {s8} | <= 3 | {'yes' if s8 <= 3 else '**no**'} |")
        iou, iou_mis = f["attention_mask_iou"], f["attention_mask_iou_mismatched"]
        lines.append(f"| attention-mask IoU vs renderer masks | {iou:.3f} | > mismatched pairs ({iou_mis:.3f}) | "
                     f"{'yes' if iou > iou_mis else '**no**'} |")
        if "attention_own_subject_win_rate" in f:
            const, win = f["attention_mask_iou_constant"], f["attention_own_subject_win_rate"]
            lines += [f"| attention-mask IoU vs a constant mask (the mean truth, {const:.3f}) | {iou:.3f} "
                      f"| > {const:.3f} | {'yes' if iou > const else '**no**'} |",
                      "| two-object renders: a subject's attention heavier on it than on the other "
                      f"| {win:.3f} | > 0.75 (chance: 0.5) | {'yes' if win > 0.75 else '**no**'} |"]
        lines.append("")
        lines.append("Training wall times are per model; a model trained in several sessions (resumed from its "
                     "checkpoint) reports their sum.")
        trend = loss_trend(logs / "unet_loss.csv")
        if trend is not None:
            lines.append(f"UNet loss, mean of the last 10 logged points: {trend[1]:.4f}, against {trend[0]:.4f} for "
                         f"the 10 before (`logs/unet_loss.csv`): "
                         f"{'still falling' if trend[1] < trend[0] else 'no longer falling'}.")
        lines.append("")
    lines.append("What was tried to reach the targets, and what the model still gets wrong: "
                 "[logs/attempts.md](logs/attempts.md).\n")
    (WEIGHTS_DIR / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {WEIGHTS_DIR / 'README.md'}")


if __name__ == "__main__":
    main()
