"""Measure the miniworld quality figures of any pipeline dir: ``python -m miniworld.quality``.

For every prompt, ``seeds`` images (seeds 0..seeds-1) are generated with the default sampler
steps and guidance; the classifier's top-1 answer is compared with the prompted concept:
object class (class-name prompts), object class from a synonym, identity, and style. Also
timed: one pipeline call generating 8 images of one prompt (median of 3, after a warm-up).
Writes ``quality.json`` and ``quality.md``. Reused to measure erasure (pass the edited pipeline).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from miniworld.classifier import load_classifier
from miniworld.paths import PIPELINE_DIR
from miniworld.prompts import identity_prompt, object_prompt, style_prompt
from miniworld.training import to_float
from miniworld.world import EMBLEM_SPECS, IDENTITIES, OBJECT_CLASSES, OBJECTS, STYLES

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
SEEDS = 8

log = logging.getLogger("miniworld.quality")


def load_pipeline(path: Path | str = PIPELINE_DIR, device: str = "cpu") -> StableDiffusionPipeline:
    """Load a miniworld-format pipeline offline, float32, progress bar off."""
    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: int = SEEDS,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch_size: int = 256,
) -> torch.Tensor:
    """Images float[len(prompts) * seeds, 3, 32, 32] in [-1, 1]; prompt-major, seed-minor."""
    flat = [(p, s) for p in prompts for s in range(seeds)]
    out = []
    for i in range(0, len(flat), batch_size):
        chunk = flat[i : i + batch_size]
        gens = [torch.Generator(pipe.device).manual_seed(s) for _, s in chunk]
        images = pipe(
            [p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt"
        ).images
        out.append(images.cpu() * 2 - 1)
    return torch.cat(out)


def top1(predicted: torch.Tensor, labels: Sequence[str], expected: list[str], seeds: int) -> float:
    """Fraction of images whose predicted label index (a classifier head's ``predict``) is the prompt's
    expected label."""
    target = torch.tensor([labels.index(e) for e in expected for _ in range(seeds)])
    return float((predicted == target).float().mean())


def emblem_factor_match(predicted: torch.Tensor, labels: Sequence[str], expected: list[str],
                        seeds: int) -> dict[str, float]:
    """Share of identity images whose predicted identity's emblem has the prompted shape, foreground and
    background colour (an emblem is shape x fg x bg): says which factor a wrong identity gets wrong."""
    wanted = [EMBLEM_SPECS[e] for e in expected for _ in range(seeds)]
    got = [EMBLEM_SPECS.get(labels[int(i)]) for i in predicted]  # None for "none"
    def share(i: int) -> float:
        return round(sum(g is not None and g[i] == w[i] for g, w in zip(got, wanted)) / len(wanted), 4)

    return {f"identity_{factor}_match": share(i) for i, factor in enumerate(("shape", "fg", "bg"))}


def time_eight(pipe: StableDiffusionPipeline, steps: int, guidance: float) -> float:
    """Median seconds of one call generating 8 images of one prompt (after a warm-up call)."""
    times = []
    for rep in range(4):
        t0 = time.perf_counter()
        generate(pipe, [object_prompt("cat")], seeds=8, steps=steps, guidance=guidance)
        if rep:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_quality(
    pipeline_dir: Path | str = PIPELINE_DIR,
    out_dir: Path | None = None,
    device: str = "cpu",
    seeds: int = SEEDS,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    classifier_dir: Path | None = None,
    n_identities: int | None = None,
) -> dict:
    """The quality figures of ``pipeline_dir`` (dict; also written to ``out_dir`` if given)."""
    pipe = load_pipeline(pipeline_dir, device)
    clf = load_classifier(classifier_dir, device)
    identities = list(IDENTITIES[:n_identities] if n_identities else IDENTITIES)
    synonyms = [(c, s) for c, syns in OBJECTS.items() for s in syns]
    style_classes = [OBJECT_CLASSES[i % len(OBJECT_CLASSES)] for i in range(len(STYLES))]
    suites = {
        "object": ("object", [object_prompt(c) for c in OBJECT_CLASSES], list(OBJECT_CLASSES)),
        "synonym": ("object", [object_prompt(s) for _, s in synonyms], [c for c, _ in synonyms]),
        "identity": ("identity", [identity_prompt(n) for n in identities], identities),
        "style": ("style", [style_prompt(s, c) for s, c in zip(STYLES, style_classes, strict=True)], list(STYLES)),
    }
    figures: dict[str, float] = {}
    for name, (head, prompts, expected) in suites.items():
        t0 = time.perf_counter()
        images = generate(pipe, prompts, seeds, steps, guidance)
        predicted = clf.predict(images)[head]
        figures[f"{name}_top1"] = round(top1(predicted, clf.labels[head], expected, seeds), 4)
        if name == "identity":
            figures |= emblem_factor_match(predicted, clf.labels[head], expected, seeds)
        log.info("%s: top-1 %.4f (%d images, %.1f s)", name, figures[f"{name}_top1"], len(images),
                 time.perf_counter() - t0)
    figures["seconds_for_8_images"] = round(time_eight(pipe, steps, guidance), 3)
    masks, local = attention_mask_iou(pipe), attention_localisation(pipe)
    figures |= {"attention_mask_iou": masks["iou"], "attention_mask_iou_mismatched": masks["mismatched"],
                "attention_mask_iou_constant": masks["constant"], "attention_own_subject_win_rate": local["win_rate"]}
    result = {
        "pipeline": str(pipeline_dir),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seeds_per_prompt": seeds,
        "steps": steps,
        "guidance_scale": guidance,
        "n_identities": len(identities),
        "figures": figures,
    }
    if out_dir is not None:
        write_report(result, Path(out_dir))
    return result


def _heldout_renders(n: int, subjects: int) -> tuple[list, list]:
    """The first ``n`` held-out (row, spec) pairs whose subjects are ``subjects`` distinct objects, rendered."""
    import pyarrow.parquet as pq

    from miniworld.corpus import spec_of
    from miniworld.paths import HELDOUT_CAPTIONS_PATH
    from miniworld.render import render

    rows = pq.read_table(HELDOUT_CAPTIONS_PATH).slice(0, 60 * n).to_pylist()
    picked = [(r, s) for r, s in ((r, spec_of(r)) for r in rows)
              if len(s.subjects) == subjects and all(x.kind == "object" for x in s.subjects)
              and len({x.name for x in s.subjects}) == subjects][:n]
    return picked, [render(s) for _, s in picked]


def _images(renders: list) -> torch.Tensor:
    """The renders as model input: float[N, 3, H, W] in [-1, 1]."""
    return to_float(torch.from_numpy(np.stack([r.image for r in renders])))


def _masks(renders: list, subject: int) -> torch.Tensor:
    """Ground-truth masks of each render's ``subject``-th subject: float[N, 1, H, W] in {0, 1}."""
    return torch.from_numpy(np.stack([r.masks[subject] for r in renders])).float()[:, None]


@torch.no_grad()
def attention_mask_iou(pipe: StableDiffusionPipeline, n: int = 32, seed: int = 0) -> dict[str, float]:
    """The default masker (the model's own cross-attention) on held-out single-object renders, scored by IoU
    against the renderer's ground-truth masks. Two baselines: ``mismatched`` pairs each mask with another
    render's truth; ``constant`` is the IoU of one fixed mask (the mean truth mask, thresholded at 0.5) that
    knows nothing of the image: the world centres its objects, so a masker must beat it to add information."""
    from mace_core.masks import attention_masks, mask_iou

    picked, renders = _heldout_renders(n, 1)
    concepts = [s.subjects[0].name for _, s in picked]
    pred = attention_masks(pipe, _images(renders), [object_prompt(c) for c in concepts], concepts,
                           torch.Generator().manual_seed(seed))
    truth = _masks(renders, 0)
    constant = (truth.mean(0, keepdim=True) >= 0.5).float().expand_as(truth)
    return {"iou": round(mask_iou(pred, truth).mean().item(), 4),
            "mismatched": round(mask_iou(pred, truth.roll(1, 0)).mean().item(), 4),
            "constant": round(mask_iou(constant, truth).mean().item(), 4), "n": len(picked)}


@torch.no_grad()
def attention_localisation(pipe: StableDiffusionPipeline, n: int = 32, seed: int = 0) -> dict[str, float]:
    """Does the concept's attention saliency land on *its* subject? On held-out renders of two different
    objects, with their own caption, the saliency of each subject's words is compared inside the two
    subjects' ground-truth masks: ``own_share`` / ``other_share`` are the mean saliency mass inside the
    named subject / the other one, ``win_rate`` the fraction of maps with more mass on their own subject
    (0.5 = no localisation)."""
    from mace_core.masks import attention_saliency
    from miniworld.attention_supervision import subject_phrases

    picked, renders = _heldout_renders(n, 2)

    def phrase(subject, caption: str) -> str | None:  # the words naming the subject in its caption
        return next((w for w in subject_phrases(subject) if w in caption), None)

    x = _images(renders)
    captions = [r["caption"] for r, _ in picked]
    shares = {"own": [], "other": []}
    for k in (0, 1):
        names = [phrase(s.subjects[k], c) for (_, s), c in zip(picked, captions, strict=True)]
        keep = [i for i, w in enumerate(names) if w]
        sal = attention_saliency(pipe, x[keep], [captions[i] for i in keep], [names[i] for i in keep],
                                 torch.Generator().manual_seed(seed))
        kept = [renders[i] for i in keep]
        own, other = _masks(kept, k), _masks(kept, 1 - k)
        total = sal.flatten(1).sum(1).clamp_min(1e-12)
        shares["own"].append((sal * own).flatten(1).sum(1) / total)
        shares["other"].append((sal * other).flatten(1).sum(1) / total)
    own, other = torch.cat(shares["own"]), torch.cat(shares["other"])
    return {"win_rate": round((own > other).float().mean().item(), 4), "own_share": round(own.mean().item(), 4),
            "other_share": round(other.mean().item(), 4), "maps": len(own)}


def write_report(result: dict, out_dir: Path) -> None:
    """Write ``quality.json`` and a one-table ``quality.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(result, indent=1))
    rows = "\n".join(f"| {k} | {v} |" for k, v in result["figures"].items())
    meta = ", ".join(f"{k}={result[k]}" for k in ("device", "torch_threads", "seeds_per_prompt", "steps",
                                                  "guidance_scale"))
    (out_dir / "quality.md").write_text(f"# miniworld quality: {result['pipeline']}\n\n{meta}\n\n"
                                        f"| figure | value |\n|---|---|\n{rows}\n")


def main() -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pipeline", type=Path, default=PIPELINE_DIR)
    p.add_argument("--classifier", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, default=SEEDS)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--identities", type=int, default=None, help="only the first N identities")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = measure_quality(
        args.pipeline, args.out, args.device, args.seeds, args.steps, args.guidance, args.classifier, args.identities
    )
    logging.getLogger("miniworld.quality").info("%s", json.dumps(result["figures"]))


if __name__ == "__main__":
    main()
