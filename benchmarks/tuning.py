"""What was tuned for the miniworld presets: one erase setting under config variants, measured.

    python -m benchmarks.tuning                                   # objects: each class alone, as the quality suite
    python -m benchmarks.tuning --classes bird,frog               # objects: a screen on some classes
    python -m benchmarks.tuning --suite styles                    # styles: erase 10, keep 10
    python -m benchmarks.tuning --suite identities                # identities: erase 100, keep 100
    python -m benchmarks.tuning --suite prior                     # objects: the fusion priors vs held-out captions
    python -m benchmarks.tuning --suite identities_count --count 1  # identities: erase N, the prior's scale
    python -m benchmarks.tuning --suite identities_kept --count 28  # identities: erase 100, keep K
    python -m benchmarks.tuning --suite identities_retained --count 28  # identities: erase 100, keep 100, retain K
    python -m benchmarks.tuning --variant '{"cfr": {"lam": 1000}}' --seeds 4 --out tuning_objects_lam  # a screen
    python -m benchmarks.tuning --suite identities_kept --count 100 --model miniworld/weights_text256/pipeline
                                                                  # another miniworld-format model, e.g. a wider one
    python -m benchmarks.tuning --suite identities_kept --count 100 --seeds 8 --holdout-from 4 --variant ...
                                # a screen's picks rescored on seed indices 4-7, which a 4-seed screen did not see

Each variant is a partial config (sections merged over ``configs/miniworld-<suite>.yaml``; objects for
``prior``), evaluated like the quality benchmark (same store, so LoRAs, CFR statistics and evaluation images are
shared between variants that do not change them).
- ``objects``: erases each of the 10 classes alone, keeping (and retaining) the other 9, exactly as the
  quality benchmark's objects suite; a row is the mean over the 10 classes.
- ``identities``: erases identities 100-199 and keeps (and retains) 0-99, the quality benchmark's hardest
  identity setting; each row adds the held-out captions that name no erased identity, as in ``prior``.
- ``prior``: the quality benchmark's ablation setting (5 objects erased, the other 5 kept and retained, fusion
  prior weight scaled x5) under the fusion's general (``prior_weight``) and domain (``prior_weight x
  domain_weight``) prior coefficients; each row adds the Fréchet distance and CLIP score on 200 held-out
  captions that name no erased class (the quality benchmark's specificity set), which H_o alone does not see.
- ``identities_count``: the quality benchmark's identity setting at ``--count`` N (the first N of identities
  100-199 erased, 0-99 kept and retained), with the fusion prior weight at the benchmark's N/100 scaling times a
  factor (a variant's ``prior_scale``): is the scaling too light when few are erased?
- ``identities_kept``: erases identities 100-199 with the identities preset, keeping (and retaining) only the first
  ``--count`` K of 0-99: does erasing 100 fail for want of room once the kept identities fill the text encoder's
  width (128)?
- ``identities_retained``: erases identities 100-199 and keeps all of 0-99, but retains (domain prior) only the
  first ``--count`` K: can the general prior hold the kept identities that the domain prior leaves out? Each row
  adds Acc_s over the retained and over the other kept identities.
Writes ``benchmarks/results/tuning_<suite>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass

from benchmarks.quality import (ABLATION_FUSION, ABLATION_LORA, PREVIOUS_OBJECTS_FUSION, PREVIOUS_OBJECTS_PRIOR,
                                MODEL_HELP, RESULTS, Subject, check_model_and_stem, clip_scores, erase, evaluate,
                                identity_concept, make_config, object_concept, pct, retain, row, scaled_prior_weight,
                                style_concept, suite_heldout)
from miniworld.world import IDENTITIES, OBJECT_CLASSES, STYLES

EXCLUDE_ERASED = {"exclude_erased": True}  # the general prior without the captions naming an erased concept

# Rerun on the current weights, which erase bird and frog less at the previous weights' preset (objects suite: H_o
# 61.3 and 69.1, mean 89.8) while keeping the other classes better (Acc_s 96.9): the sweep moves toward lighter
# priors and stronger LoRAs. The previous weights' sweep picked the preset (H_o 95.6 there; git history of
# tuning_objects.md).
# The sweep is laid over the preset it replaced (fusion prior 0.004 x (P + 600 D)), so that it reproduces; the
# preset is now the fourth row.
OBJECT_VARIANTS: tuple[dict, ...] = (
    {},  # the previous preset: 124 prompts (name and synonyms), fusion prior 0.004 x (P + 600 D), lam 0
    {"fusion": {"domain_weight": 400.0}},  # domain coefficient 2.4 -> 1.6
    {"fusion": {"prior_weight": 0.002, "domain_weight": 1200.0}},  # general prior halved, same domain coefficient
    {"fusion": {"prior_weight": 0.002, "domain_weight": 800.0}},  # both lighter
    {"lora": {"steps": 400}},  # stronger LoRAs, the same fusion
    {"lora": {"steps": 400}, "fusion": {"domain_weight": 900.0}},  # ... with domain coefficient 3.6
    {"lora": {"steps": 400}, "fusion": {"prior_weight": 0.002, "domain_weight": 1200.0}},  # ... half general prior
    {"lora": {"steps": 400}, "fusion": {"prior_weight": 0.002, "domain_weight": 1800.0}},  # ... and domain 3.6
    {"fusion": {"lora_tokens": "all"}},  # the paper's fusion targets: every token of the erased prompts
)
# The ablation's 5 erased classes: general and domain prior coefficients (x5 for the 5 erased) against held-out
# specificity. The preset is P 0.02, D 12 here.
PRIOR_VARIANTS: tuple[dict, ...] = (
    {},
    {"fusion": {"prior_weight": 0.0002, "domain_weight": 60000.0}},  # session 10's quality run: general prior / 100
    {"fusion": {"prior_weight": 0.01, "domain_weight": 1200.0}},
    {"fusion": {"prior_weight": 0.05, "domain_weight": 240.0}},
    {"fusion": {"prior_weight": 0.02, "domain_weight": 1500.0}},  # domain coefficient 30
    {"fusion": {"prior_weight": 0.0002, "domain_weight": 60000.0, "lam": 100.0}},  # the same with lam 100
)
# Rerun on the current weights (the previous weights' sweep picked domain weight 3000; these weights erase more at
# the same setting, Acc_e 13.0 vs 28.7, so the sweep moves toward more domain prior and specificity). Fusion-only
# variants: they share the preset's 100 LoRAs. The second row (domain weight 5000) is the preset now.
PREVIOUS_IDENTITIES_FUSION = {"domain_weight": 3000.0}
PREVIOUS_IDENTITIES_LORA = {"learning_rate": 0.001}  # pinned, so that the sweep does not move with the preset's lr
IDENTITY_VARIANTS: tuple[dict, ...] = (
    {},  # the previous preset: 200 LoRA steps at lr 1e-3, fusion domain weight 3000, lora_tokens concept
    {"fusion": {"domain_weight": 5000.0}},
    {"fusion": {"domain_weight": 10000.0}},
    {"fusion": {"domain_weight": 5000.0, "lora_tokens": "all"}},  # the paper's fusion targets
    {"fusion": {"prior_weight": 0.002, "domain_weight": 2500.0}},  # 2x the general prior, domain coefficient 5
    # the general prior without the 34,967 captions that name an erased identity (prior.exclude_erased; CFR reads
    # it too, so these rows train their own 100 LoRAs): the preset, then a 5x heavier general prior at the same
    # domain coefficient (3)
    {"prior": EXCLUDE_ERASED},
    {"prior": EXCLUDE_ERASED, "fusion": {"prior_weight": 0.005, "domain_weight": 600.0}},
)
# The styles preset (official art values: LoRA lr 1e-4 for 50 steps, fusion prior 0.001 x (P + 50 D)) leaves 72.5 %
# of erased-style images recognised on the current weights (4 seeds): the sweep strengthens the LoRAs and
# lightens the prior.
OFFICIAL_ART = {"lora": {"learning_rate": 0.0001, "steps": 50},
                "fusion": {"prior_weight": 0.001, "domain_weight": 50.0}}
STYLE_VARIANTS: tuple[dict, ...] = (
    {},
    {"lora": {"learning_rate": 0.001, "steps": 100}},
    {"lora": {"learning_rate": 0.001, "steps": 200}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"domain_weight": 20.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"lora_tokens": "all"}},
    # the preset's prior coefficients are 0.001 general, 0.05 domain; the objects preset (x10 for 10 erased) is 0.04, 24
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.01, "domain_weight": 250.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.01, "domain_weight": 1000.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.04, "domain_weight": 60.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.04, "domain_weight": 250.0}},
    {"lora": {"learning_rate": 0.001, "steps": 100}, "fusion": {"prior_weight": 0.01, "domain_weight": 250.0}},
    # a heavier general prior stops the erasure; the domain prior is what keeps the kept styles: the preset's
    # general prior (or less) with domain coefficients 1-10
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"domain_weight": 1000.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"domain_weight": 5000.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.0002, "domain_weight": 5000.0}},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.0002, "domain_weight": 25000.0}},
    # the general prior without the 26,022 captions that name an erased style (prior.exclude_erased): the preset,
    # then heavier general priors at the preset's domain coefficient (0.02) and above
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"domain_weight": 20.0}, "prior": EXCLUDE_ERASED},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.01, "domain_weight": 2.0},
     "prior": EXCLUDE_ERASED},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.01, "domain_weight": 20.0},
     "prior": EXCLUDE_ERASED},
    {"lora": {"learning_rate": 0.001, "steps": 200}, "fusion": {"prior_weight": 0.05, "domain_weight": 4.0},
     "prior": EXCLUDE_ERASED},
)
# identities_count: factors on the N/100-scaled fusion prior weight (both priors)
IDENTITY_COUNT_VARIANTS: tuple[dict, ...] = ({}, {"prior_scale": 2.0}, {"prior_scale": 4.0}, {"prior_scale": 16.0})


@dataclass(frozen=True)
class Setting:
    """One tuning setting: its cases (erased, kept, the sections every variant shares), and how it is reported.
    A variant's row is the mean of its cases' metrics."""

    cases: list[tuple[list[dict], list[dict], dict]]
    variants: tuple[dict, ...]
    keys: tuple[str, ...]  # the metrics of its table
    what: str  # its table's description of the concepts
    stem: str  # results file name, without extension
    heldout: bool = False  # also score the held-out captions that name no erased concept
    preset: str = ""  # configs/miniworld-<preset>.yaml; "" = the suite's own
    retained: int = 0  # > 0: also report Acc_s over the first ``retained`` kept concepts and over the others


def setting(suite: str, count: int = 1, classes: tuple[str, ...] = ()) -> Setting:
    """The tuning setting of ``suite`` (``count``: identities erased, for ``identities_count``, kept, for
    ``identities_kept``, or retained, for ``identities_retained``; ``classes``: the object classes erased one at a
    time, all 10 when empty)."""
    if suite == "objects":
        cases = []
        for c in classes or OBJECT_CLASSES:
            kept = [object_concept(k) for k in OBJECT_CLASSES if k != c]
            cases.append(([object_concept(c)], kept, {"prior": retain(kept) | PREVIOUS_OBJECTS_PRIOR,
                                                       "fusion": PREVIOUS_OBJECTS_FUSION}))
        what = (f"Each of {', '.join(classes)} erased alone (a screen on the classes the preset erases worst); kept "
                f"and retained: the other 9; mean over these {len(classes)} classes." if classes else
                "Each class erased alone; kept and retained: the other 9; mean over the 10 classes.")
        what += (" Variants are laid over the previous preset (fusion prior 0.004 x (P + 600 D)): 'preset' is that "
                 "setting.")
        return Setting(cases, OBJECT_VARIANTS, ("acc_e", "acc_s", "acc_g", "h_o"), what,
                       "_".join(("tuning_objects", *classes)))
    if suite == "styles":
        erased = [style_concept(x) for x in STYLES[:10]]
        kept = [style_concept(x) for x in STYLES[10:]]
        # the sweep is laid over the styles preset it replaced (the official art values), so that it reproduces
        return Setting([(erased, kept, {"prior": retain(kept), **OFFICIAL_ART})], STYLE_VARIANTS,
                       ("acc_e", "acc_s", "h_c", "clip_e", "clip_s", "h_a"),
                       "Erased: the first 10 styles; kept and retained: the other 10 (style-head accuracy; CLIP_e / "
                       "CLIP_s: miniworld-CLIP score of erased / kept prompts, H_a = CLIP_s - CLIP_e). Variants are "
                       "laid over the official art values (LoRA lr 1e-4 x 50 steps, fusion 0.001 x (P + 50 D)), the "
                       "styles preset before this sweep: 'preset' is that setting.", "tuning_styles")
    if suite == "prior":
        erased = [object_concept(c) for c in OBJECT_CLASSES[:5]]
        kept = [object_concept(c) for c in OBJECT_CLASSES[5:]]
        # the ablation's pinned setting, so that the sweep does not move with the objects preset
        shared = {"prior": retain(kept) | PREVIOUS_OBJECTS_PRIOR, "fusion": ABLATION_FUSION, "lora": ABLATION_LORA}
        return Setting([(erased, kept, shared)], PRIOR_VARIANTS,
                       ("acc_e", "acc_s", "acc_g", "h_o", "frechet_unrelated", "clip_unrelated"),
                       "Erased: airplane, automobile, bird, cat, deer; kept and retained: the other 5. The last two "
                       "columns score 200 held-out captions that name no erased class (Fréchet distance on classifier "
                       "features to their renders, lower is better; miniworld-CLIP score, higher is better).",
                       "tuning_prior", heldout=True, preset="objects")
    kept = [identity_concept(n) for n in IDENTITIES[:100]]
    if suite == "identities_count":
        erased = [identity_concept(n) for n in IDENTITIES[100:100 + count]]
        shared = {"prior": retain(kept), "fusion": {"prior_weight": scaled_prior_weight("identities", count, 100)}}
        return Setting([(erased, kept, shared)], IDENTITY_COUNT_VARIANTS, ("acc_e", "acc_s", "h_c"),
                       f"Erased: {'identity 100' if count == 1 else f'identities 100-{99 + count}'}; kept and "
                       f"retained: identities 0-99. prior_scale multiplies the fusion prior weight of the N/100 "
                       f"scaling ({shared['fusion']['prior_weight']:g} here).",
                       f"tuning_identities_{count}", preset="identities")
    erased = [identity_concept(n) for n in IDENTITIES[100:200]]
    if suite == "identities_kept":
        kept = kept[:count]
        return Setting([(erased, kept, {"prior": retain(kept)})], ({},), ("acc_e", "acc_s", "h_c"),
                       f"Erased: identities 100-199; kept and retained: identities 0-{count - 1} only. The identities "
                       f"preset as it is.", f"tuning_identities_kept_{count}", preset="identities")
    if suite == "identities_retained":
        return Setting([(erased, kept, {"prior": retain(kept[:count])})], ({},),
                       ("acc_e", "acc_s", "h_c", "acc_s_retained", "acc_s_unretained"),
                       f"Erased: identities 100-199; kept: identities 0-99; retained (domain prior): identities "
                       f"0-{count - 1} only. acc_s_retained / acc_s_unretained: Acc_s over the retained / the other "
                       f"kept identities. The identities preset as it is.", f"tuning_identities_retained_{count}",
                       preset="identities", retained=count)
    # laid over the preset it replaced (fusion domain weight 3000), LoRA lr pinned, so that the sweep reproduces
    shared = {"prior": retain(kept), "fusion": PREVIOUS_IDENTITIES_FUSION, "lora": PREVIOUS_IDENTITIES_LORA}
    return Setting([(erased, kept, shared)], IDENTITY_VARIANTS,
                   ("acc_e", "acc_s", "h_c", "frechet_unrelated", "clip_unrelated"),
                   "Erased: identities 100-199; kept and retained: identities 0-99. The last two columns score 200 "
                   "held-out captions that name no erased identity (Fréchet distance on classifier features to their "
                   "renders, lower is better; miniworld-CLIP score, higher is better). Variants are laid over the "
                   "previous preset (LoRA lr 1e-3, fusion 0.001 x (P + 3000 D)): 'preset' is that setting.",
                   "tuning_identities",
                   heldout=True)


def retained_split(per_kept: dict[str, float], kept: list[str], k: int) -> dict[str, float | None]:
    """Acc_s (%) over the first ``k`` kept concepts (the retained) and over the others, from per-concept
    accuracies."""
    def mean(names: list[str]) -> float | None:
        return pct(sum(per_kept[n] for n in names) / len(names)) if names else None

    return {"acc_s_retained": mean(kept[:k]), "acc_s_unretained": mean(kept[k:])}


def mean_row(rows: list[dict]) -> dict:
    """One row of several cases: the mean of each metric (None where a case lacks it), seconds summed."""
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0])
    for k, v in rows[0].items():
        if isinstance(v, (int, float)) and k != "setting":
            values = [r[k] for r in rows if r.get(k) is not None]
            out[k] = round(sum(values) / len(values), 1) if k not in ("erase_s", "lora_misses") else sum(values)
    return out


def merged(base: dict, over: dict) -> dict:
    """``over``'s sections merged field by field over ``base``'s; ``prior_scale`` multiplies the merged fusion prior
    weight."""
    over = dict(over)
    scale = over.pop("prior_scale", 1.0)
    out = base | {k: {**base.get(k, {}), **v} for k, v in over.items()}
    if scale != 1.0:
        out["fusion"] = {**out["fusion"], "prior_weight": round(out["fusion"]["prior_weight"] * scale, 12)}
    return out


HOLDOUT_METRICS = ("acc_e", "acc_s", "acc_g", "h_o", "h_c")


def holdout_scores(store: str, ref_id: str, first: int, seeds: int) -> dict:
    """The suite's accuracies and harmonic means (%) over the images of seed index >= ``first`` of an evaluation
    (``--holdout-from``): a screen run with ``--seeds first`` chose its variant without seeing them."""
    from mace_core.evaluation import aggregate, rows_from_index
    from tasks._cache import open_store
    from tasks.evaluate import load_rows

    st = open_store(store)
    res = aggregate(rows_from_index(load_rows(st, st.get(*ref_id.split("/"))), first, seeds))
    a = res.accuracy
    values = {"acc_e": a["erased"], "acc_s": a["kept"], "acc_g": a["synonym"], "h_o": res.h_o, "h_c": res.h_c}
    return {f"{k}_holdout": pct(v) for k, v in values.items()}


# the original model's images, and so their CLIP scores, are the same for every variant: scored once
clip_scores_once = functools.lru_cache(maxsize=None)(clip_scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("objects", "identities", "prior", "identities_count", "identities_kept",
                                        "identities_retained", "styles"), default="objects")
    ap.add_argument("--count", type=int, default=1,
                    help="identities erased (identities_count), kept (identities_kept) or retained "
                    "(identities_retained), 1-100")
    ap.add_argument("--classes", default="", help="objects: comma-separated classes to screen (default all 10)")
    ap.add_argument("--variant", action="append", default=None, help="a partial config as JSON (repeatable)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--holdout-from", type=int, default=0, metavar="I",
                    help="also score each variant on the images of seed index I and above only (with --seeds above "
                    "I): those a screen run with --seeds I did not see, so its pick is scored without selection bias")
    ap.add_argument("--store", default="artifacts/bench-quality")
    ap.add_argument("--model", default="miniworld", help=MODEL_HELP)
    ap.add_argument("--out", default="", help="results file stem under benchmarks/results (default: the suite's), "
                    "so that a --variant screen does not overwrite the suite's table")
    args = ap.parse_args()
    check_model_and_stem(ap, args.model, args.out or None)
    if not 1 <= args.count <= 100:
        ap.error(f"--count {args.count}: give 1-100 (there are 100 identities to erase and 100 to keep)")
    classes = tuple(c for c in args.classes.split(",") if c)
    unknown = sorted(set(classes) - set(OBJECT_CLASSES))
    if unknown:
        ap.error(f"unknown class(es) {unknown}: choose from {', '.join(OBJECT_CLASSES)}")
    if args.holdout_from and not 0 < args.holdout_from < args.seeds:
        ap.error(f"--holdout-from {args.holdout_from}: give 1 to --seeds - 1 ({args.seeds - 1}), the first seed index "
                 "the screen did not see")
    st = setting(args.suite, args.count, classes)
    keys = st.keys + tuple(f"{k}_holdout" for k in HOLDOUT_METRICS if k in st.keys and args.holdout_from)
    variants = [json.loads(v) for v in args.variant] if args.variant else list(st.variants)
    rows, reference, original = [], None, {}
    for i, over in enumerate(variants):
        label = json.dumps(over, sort_keys=True) if over else "preset"
        name = f"q-tuning-{args.suite}-{i}"
        case_rows, case_refs = [], []
        for j, (erased, kept, shared) in enumerate(st.cases):
            case = name if len(st.cases) == 1 else f"{name}-{j}"
            report, s = erase(make_config(st.preset or args.suite, case, erased, args.store, Subject(args.model),
                                          **merged(shared, over)))
            ev = evaluate(report.output, erased, kept, args.seeds, args.store, reference_model=args.model)
            case_rows.append(row(label, report, ev, s))
            case_refs.append(row("original model", None, ev, None, "reference_metrics"))
            if args.holdout_from:
                for r, ref in ((case_rows[-1], ev.model_ref), (case_refs[-1], ev.reference_ref)):
                    r |= holdout_scores(args.store, ref, args.holdout_from, args.seeds)
            if st.retained:
                for r, m in ((case_rows[-1], ev.metrics), (case_refs[-1], ev.reference_metrics)):
                    r |= retained_split(m["per_concept"]["kept"], [c["name"] for c in kept], st.retained)
            if "clip_e" in st.keys:  # miniworld-CLIP scores of the erased and kept prompts (art protocol)
                for r, ref in ((case_rows[-1], ev.model_ref), (case_refs[-1], ev.reference_ref)):
                    c = clip_scores_once(args.store, ref)
                    r |= {"clip_e": c["erased"], "clip_s": c["kept"], "h_a": round(c["kept"] - c["erased"], 2)}
            if st.heldout:  # the original model's scores are the same for every variant: computed once per case
                h = suite_heldout(args.store, report.output, [c["name"] for c in erased], 200, ("unrelated",),
                                  with_original=i == 0, original_model=args.model)["unrelated"]
                original[j] = original.get(j) or h["original"]
                for r, scores in ((case_rows[-1], h["erased"]), (case_refs[-1], original[j])):
                    r |= {"frechet_unrelated": scores["frechet_to_renders"], "clip_unrelated": scores["clip_score"]}
        rows.append(mean_row(case_rows))
        reference = mean_row(case_refs)
        print(rows[-1], flush=True)
    from tasks._cache import files_digest, model_dir

    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": args.seeds, "rows": rows, "reference": reference,
              "model": args.model, "model_digest": files_digest(model_dir(args.model)),
              "erased": [[c["name"] for c in e] for e, _, _ in st.cases],
              "command": "python -m benchmarks.tuning" + (f" --suite {args.suite}" if args.suite != "objects" else "")
              + (f" --count {args.count}" if args.suite.startswith("identities_") else "")
              + (f" --classes {args.classes}" if classes else "")
              + (f" --seeds {args.seeds}" if args.seeds != 4 else "")
              + (f" --holdout-from {args.holdout_from}" if args.holdout_from else "")
              + "".join(f" --variant '{v}'" for v in args.variant or ())
              + (f" --model {args.model}" if args.model != "miniworld" else "")
              + (f" --out {args.out}" if args.out else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.out or st.stem
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"# {args.suite.capitalize().replace('_', ' ')}: preset variants tried", "",
          f"`{result['command']}` ({result['date']}, {args.seeds} seeds per prompt, "
          f"model {result['model_digest'][:12]}). "
          f"{st.what} Accuracies in %." + (f" Columns *_holdout: images of seed index {args.holdout_from}-"
                                           f"{args.seeds - 1} only." if args.holdout_from else ""), "",
          "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    md += [f"| {r['setting']} | " + " | ".join(str(r[k]) for k in keys) + " |" for r in [*rows, reference]]
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
