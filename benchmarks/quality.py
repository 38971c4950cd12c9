"""Erasure quality on the miniworld: the paper's protocol (section 4) and its ablations, measured.

    python -m benchmarks.quality                          # every suite, default sizes
    python -m benchmarks.quality --suites objects --seeds 8
    python -m benchmarks.quality --suites identities --model miniworld/weights_text256/pipeline --out quality_text256

Suites (each an erase run per setting through ``flows.erase`` + a paired evaluation through ``flows.evaluate``,
all cached in one artifact store, so a rerun is cheap and LoRAs are shared between settings that contain the
same concept). As in the paper's celebrity and art protocol, every suite uses the kept concepts as the domain
prior's retain list (for objects a deliberate change: the paper's CIFAR-10 runs used no prior):

- ``objects``: erase each of the 10 object classes alone (kept: the other 9; synonyms: Acc_g) -> H_o per class;
  and all 10 together (Acc_e, Acc_g; no kept class is left, so no H_o).
- ``ablation``: erase 5 classes (kept: the other 5) with CFR only, LoRA only, naive fusion, full MACE, and full
  MACE with the ``joint`` LoRA base, at a pinned setting (``ABLATION_LORA``, ``ABLATION_FUSION``: an earlier objects
  preset with its fusion prior weight x 5), so that its rows stay comparable when the preset is retuned.
- ``identities``: erase the first N of identities 100-199 (N in --identities) keeping identities 0-99 -> H_c.
  The fusion prior weight is the preset's (tuned at N=100) scaled by N/100.
- ``identity_overlap`` (diagnostic, not in the default run): erase 1, 10, 48 identities keeping 152, with Acc_s and
  H_c read per kept group: sharing no name part with the erased identities, the first name, or the last name.
- ``styles``: erase 10, 15 and 20 of the 20 styles keeping the rest: style-head accuracy and CLIP_e / CLIP_s / H_a
  from the miniworld CLIP, and the held-out specificity below for the 10-style model.
- ``heldout``: specificity on held-out captions that name no erased class: Fréchet distance on classifier features
  to the captions' ground-truth renders and CLIP score, original vs the ablation's full MACE model (5 objects
  erased); the captions naming an erased class are scored apart.

Writes ``benchmarks/results/quality.json``, ``quality.md`` and ``quality_identities.png`` (``--out`` names another
stem). The original model (the shipped miniworld, or ``--model``) is the reference row of every table. The configs
are the shipped presets (configs/miniworld-*.yaml) with only the concept lists (and, for identities and styles, the
retain list) changed, and ``--variant`` merged over them. The preset variants that were tried are in
``benchmarks/tuning.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
SUITES = ("objects", "ablation", "identities", "identity_overlap", "styles", "heldout")
PRESETS = Path(__file__).resolve().parents[1] / "configs"
OBJECT_MAPPING = "meadow"  # a scene of the world: "a photo of a cat" -> "a photo of a meadow"


# ----------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """The model every suite erases from (and whose original is the reference row), and a partial config merged
    field by field over every suite's settings (e.g. a fusion weight tuned for that model)."""

    path: str = "miniworld"
    variant: dict = field(default_factory=dict)


SHIPPED = Subject()


def make_config(preset: str, name: str, concepts: list[dict], store: str, subject: Subject = SHIPPED,
                **sections: dict) -> Any:
    """The shipped preset with its concept list and store replaced, then ``sections`` and the subject's variant
    merged field by field, and the subject's model path."""
    from mace_cli.config_io import config_from_mapping, read_mapping

    data = read_mapping(PRESETS / f"miniworld-{preset}.yaml")
    data |= {"name": name, "concepts": concepts}
    data["execution"] = {**data.get("execution", {}), "store": store}
    for over in (sections, subject.variant, {"model": {"path": subject.path}}):
        for section, fields in over.items():
            data[section] = {**data.get(section, {}), **fields}
    return config_from_mapping(data, name)


def object_concept(name: str) -> dict:
    from miniworld.world import OBJECTS

    return {"name": name, "type": "object", "mapping": OBJECT_MAPPING, "synonyms": list(OBJECTS[name])}


def identity_concept(name: str) -> dict:
    return {"name": name, "type": "identity", "mapping": "a person"}


def retain(kept: list[dict]) -> dict:
    """The domain prior of the paper's protocol: the retained concepts themselves (spec Stage C: the official
    celebrity and art caches were built from the retention groups)."""
    return {"retain": [c["name"] for c in kept]}


def erase(cfg: Any) -> tuple[Any, float]:
    from flows.erase import erase as erase_flow

    t0 = time.perf_counter()
    report = erase_flow(cfg)
    return report, time.perf_counter() - t0


def evaluate(output: str, erased: list[dict], kept: list[dict], seeds: int, store: str,
             reference_model: str = "miniworld") -> Any:
    from flows.evaluate import evaluate as evaluate_flow
    from mace_core.config import EvaluationConfig

    cfg = EvaluationConfig(model=output, erased=erased, kept=kept, seeds_per_prompt=seeds, store=store,
                           with_synonyms=any(c.get("synonyms") for c in erased))
    return evaluate_flow(cfg, reference_model=reference_model)


def pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def row(label: str, report: Any, ev: Any, seconds: float | None, which: str = "metrics") -> dict:
    m = getattr(ev, which)
    a = m["accuracy"]
    out = {"setting": label, "acc_e": pct(a.get("erased")), "acc_s": pct(a.get("kept")),
           "acc_g": pct(a.get("synonym")), "h_o": pct(m.get("h_o")), "h_c": pct(m.get("h_c"))}
    if report is not None:
        out |= {"erase_s": round(seconds, 1), "lora_misses": report.row("lora").misses}
    return out


# ----------------------------------------------------------------------------------------------------
# Suites
# ----------------------------------------------------------------------------------------------------


def suite_objects(store: str, seeds: int, n_classes: int = 10, subject: Subject = SHIPPED) -> dict:
    from miniworld.world import OBJECT_CLASSES

    rows, reference = [], []
    for c in OBJECT_CLASSES[:n_classes]:
        kept = [object_concept(k) for k in OBJECT_CLASSES if k != c]
        report, s = erase(make_config("objects", f"q-object-{c}", [object_concept(c)], store, subject,
                                      prior=retain(kept)))
        ev = evaluate(report.output, [object_concept(c)], kept, seeds, store, subject.path)
        rows.append(row(c, report, ev, s))
        reference.append(row(c, None, ev, None, "reference_metrics"))
    mean = {k: round(float(np.mean([r[k] for r in rows])), 1) for k in ("acc_e", "acc_s", "acc_g", "h_o")}
    ref_mean = {k: round(float(np.mean([r[k] for r in reference])), 1) for k in ("acc_e", "acc_s", "acc_g", "h_o")}
    out = {"single": rows, "single_mean": mean, "reference_single_mean": ref_mean}
    if n_classes == len(OBJECT_CLASSES):
        every = [object_concept(c) for c in OBJECT_CLASSES]
        report, s = erase(make_config("objects", "q-object-all10", every, store, subject))
        ev = evaluate(report.output, every, [], seeds, store, subject.path)
        out |= {"all10": row("all 10", report, ev, s), "all10_output": report.output,
                "reference_all10": row("all 10", None, ev, None, "reference_metrics")}
    return out


# The ablation's own setting, pinned so that retuning the objects preset does not silently change it: the objects
# preset of 2026-12-01 (LoRAs 200 steps; fusion prior 0.004 x (P + 600 D), tuned for one class; the general prior
# over every caption) with the fusion prior weight scaled x5 for the 5 erased classes.
PREVIOUS_OBJECTS_FUSION = {"prior_weight": 0.004, "domain_weight": 600.0}
PREVIOUS_OBJECTS_PRIOR = {"exclude_erased": False}
ABLATION_LORA = {"steps": 200}
ABLATION_FUSION = PREVIOUS_OBJECTS_FUSION | {"prior_weight": PREVIOUS_OBJECTS_FUSION["prior_weight"] * 5}


def suite_ablation(store: str, seeds: int, subject: Subject = SHIPPED) -> dict:
    from miniworld.world import OBJECT_CLASSES

    erased = [object_concept(c) for c in OBJECT_CLASSES[:5]]
    kept = [object_concept(c) for c in OBJECT_CLASSES[5:]]
    variants = {
        "CFR only": {"lora": {"enabled": False}},
        "LoRA only": {"cfr": {"enabled": False}},
        "naive fusion (Eq. 6)": {"fusion": {"method": "naive"}},
        "full MACE (independent base)": {},
        "full MACE (joint base, as official)": {"lora": {"base": "joint"}},
    }
    rows, ev, outputs = [], None, {}
    for label, over in variants.items():
        slug = label.split(" (")[0].lower().replace(" ", "-") + ("-joint" if "joint" in label else "")
        fusion = ABLATION_FUSION | over.get("fusion", {})
        lora = ABLATION_LORA | over.get("lora", {})
        report, s = erase(make_config("objects", f"q-ablation-{slug}", erased, store, subject,
                                      **({"prior": retain(kept) | PREVIOUS_OBJECTS_PRIOR} | over
                                         | {"fusion": fusion, "lora": lora})))
        ev = evaluate(report.output, erased, kept, seeds, store, subject.path)
        rows.append(row(label, report, ev, s))
        outputs[label] = report.output
    return {"erased": [c["name"] for c in erased], "rows": rows, "outputs": outputs,
            "reference": row("original model", None, ev, None, "reference_metrics")}


def scaled_prior_weight(preset: str, n: int, tuned_at: int) -> float:
    """The preset's fusion prior weight (tuned for erasing ``tuned_at`` concepts) scaled to ``n`` erased concepts.

    Fusion balances the erased concepts' Gram (a sum over the ``n`` concepts) against the prior term
    ``prior_weight (P + domain_weight D)``; scaling ``prior_weight`` with ``n`` keeps that balance for both the
    general and the domain prior. The official celebrity configs also grow the prior with the count (8e3 at 1 to
    2e5 at 100, spec section 7); their slower growth, tried first, left 40-50 % of 1-10 erased identities
    recognised on the miniworld."""
    from mace_cli.config_io import read_mapping

    tuned = float(read_mapping(PRESETS / f"miniworld-{preset}.yaml")["fusion"]["prior_weight"])
    return round(tuned * n / tuned_at, 9)


def suite_identities(store: str, seeds: int, counts: list[int], subject: Subject = SHIPPED) -> dict:
    from miniworld.world import IDENTITIES

    kept = [identity_concept(n) for n in IDENTITIES[:100]]
    rows, refs = [], []
    for n in counts:
        erased = [identity_concept(x) for x in IDENTITIES[100:100 + n]]
        fusion = {"prior_weight": scaled_prior_weight("identities", n, tuned_at=100)}
        report, s = erase(make_config("identities", f"q-identities-{n}", erased, store, subject, prior=retain(kept),
                                      fusion=fusion))
        ev = evaluate(report.output, erased, kept, seeds, store, subject.path)
        rows.append(row(f"{n} erased", report, ev, s) | {"n": n})
        refs.append(row(f"{n} (original)", None, ev, None, "reference_metrics") | {"n": n})
    return {"rows": rows, "reference": refs, "kept": 100}


def identity_overlap_split() -> dict[str, list[str]]:
    """Identities split by the name parts they share with the erased ones (names are first x last name, 25 x 8).

    Erased: first names 13-24 x last names 4-7 (48). Kept: first names 0-12 x last names 0-3 share no name part
    (52); first names 13-24 x last names 0-3 share the first name (48); first names 0-12 x last names 4-7 share the
    last name (52)."""
    from miniworld.world import IDENTITIES

    firsts = list(dict.fromkeys(n.split()[0] for n in IDENTITIES))  # in world order
    lasts = list(dict.fromkeys(n.split()[1] for n in IDENTITIES))
    erased_first, erased_last = set(firsts[13:]), set(lasts[4:])
    group = {(True, True): "erased", (False, False): "no shared part", (True, False): "same first name",
             (False, True): "same last name"}
    out: dict[str, list[str]] = {g: [] for g in group.values()}
    for name in IDENTITIES:
        first, last = name.split()
        out[group[first in erased_first, last in erased_last]].append(name)
    return out


def suite_identity_overlap(store: str, seeds: int, counts: list[int], subject: Subject = SHIPPED) -> dict:
    """Diagnostic for the identities suite: how much of the kept identities' loss comes from shared name parts.

    One erase per N (the first N of the erased part of ``identity_overlap_split``), all 152 others retained and
    evaluated; Acc_s and H_c are then read per kept group."""
    from mace_core.metrics import harmonic_celebrities

    split = identity_overlap_split()
    groups = [g for g in split if g != "erased"]
    kept = [identity_concept(n) for g in groups for n in split[g]]
    rows = []
    for n in counts:
        erased = [identity_concept(x) for x in split["erased"][:n]]
        fusion = {"prior_weight": scaled_prior_weight("identities", n, tuned_at=100)}
        report, _ = erase(make_config("identities", f"q-identity-overlap-{n}", erased, store, subject,
                                      prior=retain(kept), fusion=fusion))
        ev = evaluate(report.output, erased, kept, seeds, store, subject.path)
        for label, m in (("erased", ev.metrics), ("original", ev.reference_metrics)):
            acc = m["per_concept"]["kept"]
            acc_e = m["accuracy"]["erased"]
            r = {"n": n, "model": label, "acc_e": pct(acc_e)}
            for g in groups:
                acc_s = float(np.mean([acc[name] for name in split[g]]))
                r[g] = {"acc_s": pct(acc_s), "h_c": pct(harmonic_celebrities(acc_e, acc_s))}
            rows.append(r)
    return {"groups": {g: len(split[g]) for g in groups}, "rows": rows}


@torch.no_grad()
def _embeds(out: Any) -> torch.Tensor:
    """The projected CLIP embedding: transformers 5 returns an output whose ``pooler_output`` holds it."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_scores(store: str, ref_id: str) -> dict[str, float]:
    """Mean miniworld-CLIP score (100 x cosine, clipped at 0) of an evaluation's images per group."""
    from PIL import Image
    from transformers import CLIPModel

    from mace_core.metrics import clip_score
    from miniworld.paths import CLIP_DIR
    from miniworld.tokenizer import load_tokenizer
    from tasks._cache import open_store
    from tasks.evaluate import load_rows

    st = open_store(store)
    ref = st.get(*ref_id.split("/"))
    rows = load_rows(st, ref)
    model = CLIPModel.from_pretrained(str(CLIP_DIR)).float().eval()
    tok = load_tokenizer(CLIP_DIR)
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(st.path(ref) / r["file"]).convert("RGB")))
                          for r in rows]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    ids = tok([r["prompt"] for r in rows], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    scores = clip_score(_embeds(model.get_image_features(pixel_values=images)),
                        _embeds(model.get_text_features(input_ids=ids)))
    out: dict[str, list[float]] = {}
    for r, s in zip(rows, scores.tolist(), strict=True):
        out.setdefault(r["group"], []).append(s)
    return {g: round(float(np.mean(v)), 2) for g, v in out.items()}


def style_concept(name: str) -> dict:
    return {"name": name, "type": "style", "mapping": "art"}


def suite_styles(store: str, seeds: int, heldout: int, counts: tuple[int, ...] = (10, 15, 20),
                 subject: Subject = SHIPPED) -> dict:
    """Erase the first N of the 20 styles keeping (and retaining) the rest, N in ``counts``; the styles preset is
    tuned at 10, its fusion prior weight is scaled by N/10. The 10-style model is also scored on held-out captions."""
    from miniworld.world import STYLES

    out: dict[str, Any] = {"runs": []}
    for n in counts:
        erased, kept = [style_concept(x) for x in STYLES[:n]], [style_concept(x) for x in STYLES[n:]]
        fusion = {"prior_weight": scaled_prior_weight("styles", n, tuned_at=10)}
        report, s = erase(make_config("styles", f"q-styles-{n}", erased, store, subject, prior=retain(kept),
                                      fusion=fusion))
        ev = evaluate(report.output, erased, kept, seeds, store, subject.path)
        after, before = clip_scores(store, ev.model_ref), clip_scores(store, ev.reference_ref)
        h = {k: round(v["kept"] - v["erased"], 2) if "kept" in v else None for k, v in (("after", after),
                                                                                       ("before", before))}
        out["runs"].append({"row": row(f"{n} styles (keep {len(kept)})", report, ev, s) | {"n": n},
                            "reference": row(f"original, N={n}", None, ev, None, "reference_metrics") | {"n": n},
                            "clip_after": after, "clip_before": before, "h_a": h})
        if n == 10:
            out["heldout"] = suite_heldout(store, report.output, [c["name"] for c in erased], heldout,
                                           original_model=subject.path)
    return out


def split_heldout(table: Any, erased: list[str], n: int) -> dict[str, Any]:
    """The first ``n`` held-out rows naming no erased concept ("unrelated": specificity) and the first ``n`` naming
    one ("erased": efficacy), by the captions' ground-truth labels: a subject (object class or identity) or the
    style."""
    names = set(erased)
    hit = [style in names or any(s[1] in names for s in json.loads(subjects))
           for subjects, style in zip(table.column("subjects").to_pylist(), table.column("style").to_pylist(),
                                      strict=True)]
    picked = {"unrelated": [i for i, h in enumerate(hit) if not h][:n],
              "erased": [i for i, h in enumerate(hit) if h][:n]}
    return {k: table.take(v) for k, v in picked.items()}


@torch.no_grad()
def suite_heldout(store: str, erased_model: str, erased: list[str], n: int,
                  subsets: tuple[str, ...] = ("unrelated", "erased"), with_original: bool = True,
                  original_model: str = "miniworld") -> dict:
    """Fréchet distance (classifier features) to ground-truth renders, and CLIP score, on held-out captions.

    Specificity is measured on captions that name none of the erased concepts (the paper's COCO-30k FID barely
    contains its erased classes); the captions naming an erased class are scored apart, where a change is wanted.
    ``with_original=False`` skips the original model (its scores depend only on the captions).
    """
    import pyarrow.parquet as pq
    from transformers import CLIPModel

    from mace_core import generate as core_generate
    from mace_core.metrics import clip_score, frechet_distance
    from mace_core.models import load_pipeline
    from miniworld.classifier import load_classifier
    from miniworld.corpus import render_table
    from miniworld.paths import CLIP_DIR, HELDOUT_CAPTIONS_PATH
    from miniworld.tokenizer import load_tokenizer

    clf = load_classifier()
    clip = CLIPModel.from_pretrained(str(CLIP_DIR)).float().eval()
    tokenizer = load_tokenizer(CLIP_DIR)
    models = (("original", original_model),) * with_original + (("erased", erased_model),)
    pipes = {label: load_pipeline(path) for label, path in models}
    out: dict[str, Any] = {"erased_concepts": erased}
    for subset, table in split_heldout(pq.read_table(HELDOUT_CAPTIONS_PATH), erased, n).items():
        if subset not in subsets:
            continue
        captions = table.column("caption").to_pylist()
        renders = torch.from_numpy(render_table(table, 1)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        text = _embeds(clip.get_text_features(input_ids=ids))
        real = clf.features(renders).numpy()
        part = {"captions": len(captions), "renders": {"clip_score": round(float(clip_score(_embeds(
            clip.get_image_features(pixel_values=renders)), text).mean()), 2)}}
        for label, pipe in pipes.items():
            images = core_generate.generate_images(pipe, captions, list(range(len(captions))), steps=20,
                                                   guidance_scale=7.5, batch_size=50)
            x = torch.stack([torch.from_numpy(np.asarray(i.convert("RGB"))) for i in images]).permute(0, 3, 1, 2)
            x = x.float().div(127.5).sub(1)
            part[label] = {"frechet_to_renders": round(frechet_distance(clf.features(x).numpy(), real), 3),
                           "clip_score": round(float(clip_score(_embeds(clip.get_image_features(pixel_values=x)),
                                                                text).mean()), 2)}
        out[subset] = part
    return out


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join("-" if r.get(c) is None else str(r.get(c)) for c in cols) + " |"
                            for r in rows) + "\n"


def _overlap_table(o: dict) -> str:
    groups = list(o["groups"])
    md = ["\n## Identities by shared name part (diagnostic)\n\nNames are first x last name (25 x 8), so in the "
          "identities suite every kept identity shares a name part with some erased one. Here the erased identities "
          "are first names 13-24 x last names 4-7, and the other 152 are kept (and retained), grouped by what they "
          "share with the erased ones: "
          + ", ".join(f"{g} ({k})" for g, k in o["groups"].items()) + ". Acc_s and H_c per group.\n\n"
          "| erased | model | acc_e | " + " | ".join(f"acc_s, {g} | h_c, {g}" for g in groups) + " |\n"
          "|---|---|---|" + "---|---|" * len(groups) + "\n"]
    for r in o["rows"]:
        md.append(f"| {r['n']} | {r['model']} | {r['acc_e']} | "
                  + " | ".join(f"{r[g]['acc_s']} | {r[g]['h_c']}" for g in groups) + " |\n")
    return "".join(md)


def _heldout_table(model: str, kind: str, h: dict) -> str:
    md = [f"\n## Held-out captions: {model} ({', '.join(h['erased_concepts'])} erased)\n\n"
          f"Specificity: captions naming no erased {kind} (lower Fréchet and higher CLIP are better, the original "
          f"model is the target). Captions naming an erased {kind} are scored apart: there the erased model should "
          "move away from the renders.\n\n| captions | model | Fréchet to renders | CLIP score |\n|---|---|---|---|\n"]
    for subset, title in (("unrelated", f"no erased {kind}"), ("erased", f"naming an erased {kind}")):
        part = h[subset]
        for k in ("original", "erased"):
            md.append(f"| {title} ({part['captions']}) | {k} | {part[k]['frechet_to_renders']} | "
                      f"{part[k]['clip_score']} |\n")
        md.append(f"| {title} ({part['captions']}) | ground-truth renders | 0 | {part['renders']['clip_score']} |\n")
    return "".join(md)


def write_report(result: dict, stem: str = "quality") -> None:
    """``<stem>.json``, ``<stem>.md`` and (with the identities suite) ``<stem>_identities.png`` under
    benchmarks/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    runs = "".join(f"- {k}: `{r['command']}` ({r['date']}, {r['wall_s']} s, {r['seeds']} seeds per prompt)\n"
                   for k, r in result["runs"].items())
    model = "" if result.get("model", "miniworld") == "miniworld" else f" ({result['model']})"
    model += f", variant `{json.dumps(result['variant'])}`" if result.get("variant") else ""
    md = [f"# Erasure quality on the miniworld{model}\n\nMachine: {result['machine']}; model weights digest "
          f"`{result['model_digest'][:16]}`, classifier digest `{result['judge_digest'][:16]}`. Suites and the "
          f"commands that measured them:\n\n{runs}\n"
          "Accuracies are the miniworld classifier's top-1 on generated images, in %. Acc_e, Acc_g: lower is "
          "better; Acc_s: higher is better. H_o, H_c: the paper's harmonic means (Eq. 8, 9).\n"]
    cols = ["setting", "acc_e", "acc_s", "acc_g", "h_o", "h_c", "erase_s", "lora_misses"]
    if "objects" in result:
        o = result["objects"]
        md.append(f"\n## Objects: one class at a time ({len(o['single'])} classes; kept: the other 9)\n\n")
        md.append(_table(o["single"] + [{"setting": "**mean**", **o["single_mean"]},
                                        {"setting": "original model (mean)", **o["reference_single_mean"]}], cols))
        if "all10" in o:
            md.append("\n## Objects: all 10 at once\n\n" + _table([o["all10"], o["reference_all10"] | {
                "setting": "original model"}], cols))
    if "ablation" in result:
        a = result["ablation"]
        md.append(f"\n## Ablation: erase {', '.join(a['erased'])} (kept: the other 5)\n\n")
        md.append(_table(a["rows"] + [a["reference"]], cols))
    if "identities" in result:
        i = result["identities"]
        md.append("\n## Identities: erase N, keep 100 others\n\n")
        md.append(_table(i["rows"] + [r | {"setting": f"original, N={r['n']}"} for r in i["reference"]], cols))
        md.append(f"\n![H_c vs number of erased identities]({stem}_identities.png)\n")
    if "identity_overlap" in result:
        md.append(_overlap_table(result["identity_overlap"]))
    if "styles" in result:
        s = result["styles"]
        parts = s["runs"]
        md.append("\n## Styles: erase N of 20, keep the rest\n\n"
                  + _table([p["row"] for p in parts] + [p["reference"] for p in parts], cols))
        md.append("\nminiworld-CLIP score by group, and H_a = CLIP_s - CLIP_e:\n\n"
                  + "".join(f"- {p['row']['setting']}: after {p['clip_after']}, before {p['clip_before']}"
                            + (f"; H_a after {p['h_a']['after']}, before {p['h_a']['before']}"
                               if p["h_a"]["after"] is not None else " (no kept style: no H_a)") + "\n"
                            for p in parts))
    if "heldout" in result:
        md.append(_heldout_table("the ablation's full MACE model", "class", result["heldout"]))
    if "heldout" in result.get("styles", {}):
        md.append(_heldout_table("the 10-style model", "style", result["styles"]["heldout"]))
    (RESULTS / f"{stem}.md").write_text("".join(md))
    if "identities" in result:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        i = result["identities"]
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.plot([r["n"] for r in i["rows"]], [r["h_c"] for r in i["rows"]], "o-", label="MACE (miniworld)")
        ax.set_xscale("log")
        ax.set_xlabel("identities erased")
        ax.set_ylabel("H_c (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / f"{stem}_identities.png", dpi=120)


VARIANT_EXAMPLE = """'{"fusion": {"domain_weight": 8000}}'"""
MODEL_HELP = ("the model to erase from and the reference rows' model: 'miniworld' (the shipped one) or a "
              "miniworld-format pipeline directory, e.g. one trained with a wider text encoder")


def check_model_and_stem(p: argparse.ArgumentParser, model: str, stem: str | None) -> None:
    """One-line argparse errors, before any work, for a ``--model`` that is no pipeline directory and an ``--out``
    that is no plain file stem (``None``: the caller's default stem)."""
    if stem is not None and not re.fullmatch(r"[\w-]+", stem):
        p.error(f"--out {stem!r}: give a file stem of letters, digits, '_' or '-', without a folder")
    if model != "miniworld" and not (Path(model) / "model_index.json").is_file():
        p.error(f"--model {model}: no model_index.json there; give 'miniworld' or a diffusers pipeline directory")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default="objects,ablation,identities,styles,heldout",
                   help=f"comma-separated, from: {', '.join(SUITES)}")
    p.add_argument("--seeds", type=int, default=4, help="images per evaluation prompt")
    p.add_argument("--object-classes", type=int, default=10, help="classes erased one at a time (10: also all 10)")
    p.add_argument("--identities", default="1,5,10,100", help="identity counts to erase")
    p.add_argument("--heldout", type=int, default=200, help="held-out captions for specificity")
    p.add_argument("--store", default=os.environ.get("MACE_BENCH_STORE", "artifacts/bench-quality"))
    p.add_argument("--model", default="miniworld", help=MODEL_HELP)
    p.add_argument("--variant", default="{}", help="a partial config as JSON, merged over every suite's settings, "
                   f"e.g. {VARIANT_EXAMPLE}")
    p.add_argument("--out", default="quality", help="results file stem under benchmarks/results")
    args = p.parse_args()
    check_model_and_stem(p, args.model, args.out)
    try:
        subject = Subject(args.model, json.loads(args.variant))
    except json.JSONDecodeError as e:
        p.error(f"--variant {args.variant!r} is not JSON ({e}); give e.g. {VARIANT_EXAMPLE}")
    if not isinstance(subject.variant, dict) or not all(isinstance(v, dict) for v in subject.variant.values()):
        p.error(f"--variant {args.variant!r}: give config sections, e.g. {VARIANT_EXAMPLE}")
    suites = args.suites.split(",")
    t0 = time.perf_counter()
    result: dict[str, Any] = {"machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                                          "torch": torch.__version__, "threads": torch.get_num_threads()},
                              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": args.seeds}
    from mace_core.prompt_sets import file_digest
    from miniworld.paths import CLASSIFIER_DIR
    from tasks._cache import files_digest, model_dir

    # suites of an earlier invocation are kept only when the same model weights made the images under the same
    # variant and the same classifier judged them
    result["model"] = args.model
    result["variant"] = subject.variant
    result["model_digest"] = files_digest(model_dir(args.model))
    result["judge_digest"] = file_digest(CLASSIFIER_DIR / "model.safetensors")
    report_json = RESULTS / f"{args.out}.json"
    previous = json.loads(report_json.read_text()) if report_json.exists() else {}
    same = ("model_digest", "judge_digest", "variant")
    if all(previous.get(k, {}) == result[k] for k in same):
        result |= {k: v for k, v in previous.items() if k in SUITES}
        result["runs"] = {k: v for k, v in previous.get("runs", {}).items() if k in SUITES}
    result.setdefault("runs", {})
    command = "python -m benchmarks.quality " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items()
        if k != "store" and (k, v) not in (("model", "miniworld"), ("variant", "{}"), ("out", "quality")))
    for suite in suites:
        t = time.perf_counter()
        if suite == "objects":
            result["objects"] = suite_objects(args.store, args.seeds, args.object_classes, subject)
        elif suite == "ablation":
            result["ablation"] = suite_ablation(args.store, args.seeds, subject)
        elif suite == "identities":
            counts = [int(x) for x in args.identities.split(",")]
            result["identities"] = suite_identities(args.store, args.seeds, counts, subject)
        elif suite == "identity_overlap":
            result["identity_overlap"] = suite_identity_overlap(args.store, args.seeds, [1, 10, 48], subject)
        elif suite == "styles":
            result["styles"] = suite_styles(args.store, args.seeds, args.heldout, subject=subject)
        elif suite == "heldout":
            model = result.get("ablation", {}).get("outputs", {}).get("full MACE (independent base)")
            if model is None:
                raise SystemExit("the heldout suite compares with the ablation's full model: run that suite first")
            result["heldout"] = suite_heldout(args.store, model, result["ablation"]["erased"], args.heldout,
                                              original_model=subject.path)
        else:
            raise SystemExit(f"unknown suite {suite!r}")
        print(f"{suite}: {time.perf_counter() - t:.0f} s", flush=True)
        result["runs"][suite] = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "wall_s": round(time.perf_counter() - t), "seeds": args.seeds}
        result["wall_s"] = time.perf_counter() - t0
        write_report(result, args.out)


if __name__ == "__main__":
    main()
