"""What was tuned for the miniworld presets: one erase setting under config variants, measured.

    python -m benchmarks.tuning                                   # objects: the default variants below
    python -m benchmarks.tuning --suite identities                # identities: erase 100, keep 100
    python -m benchmarks.tuning --variant '{"cfr": {"lam": 1000}}' --seeds 4

Each variant is a partial config (sections merged over ``configs/miniworld-<suite>.yaml``), evaluated like the
quality benchmark (same store, so LoRAs, CFR statistics and evaluation images are shared between variants
that do not change them).
- ``objects``: erases airplane, automobile, bird, cat and deer and keeps dog, frog, horse, ship and truck (the
  last variant also retains them, as the quick start does), as in the quality benchmark's ablation suite.
- ``identities``: erases identities 100-199 and keeps (and retains) 0-99, the quality benchmark's hardest
  identity setting.
Writes ``benchmarks/results/tuning.json`` and ``tuning.md`` (``tuning_identities.*`` for identities).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from benchmarks.quality import RESULTS, erase, evaluate, identity_concept, make_config, object_concept, retain, row
from miniworld.world import IDENTITIES, OBJECT_CLASSES

OBJECT_VARIANTS: tuple[dict, ...] = (
    {},  # the shipped preset: lam 1000 on CFR and fusion, no prior
    {"cfr": {"lam": 100.0}, "fusion": {"lam": 100.0}},  # the preset before tuning
    {"cfr": {"lam": 1000.0}, "fusion": {"lam": 100.0}},
    {"lora": {"enabled": False}},
    {"lora": {"enabled": False}, "cfr": {"lam": 100.0}},
    {"lora": {"enabled": False}, "cfr": {"lam": 10000.0}},
    {"lora": {"enabled": False}, "cfr": {"prior_weight": 0.001}},
    {"cfr": {"prior_weight": 0.001}, "fusion": {"prior_weight": 0.001}},
    # the quick start's setting: retain the kept classes (domain prior) plus a light 10k-caption general prior
    {"prior": {"max_captions": 10000, "retain": list(OBJECT_CLASSES[5:])},
     "cfr": {"lam": 100.0, "prior_weight": 0.0002, "domain_weight": 250.0},
     "fusion": {"lam": 100.0, "prior_weight": 0.0002, "domain_weight": 250.0}},
)
IDENTITY_VARIANTS: tuple[dict, ...] = (
    {},  # the shipped preset: CFR domain weight 50, fusion domain weight 5000, prior weight 0.001, lam 0
    {"fusion": {"domain_weight": 50.0}},  # the preset before tuning
    {"lora": {"enabled": False}},
    {"fusion": {"domain_weight": 250.0}},
    {"fusion": {"domain_weight": 1000.0}},
    {"fusion": {"domain_weight": 20000.0}},
    {"fusion": {"domain_weight": 50.0, "lam": 100.0}},
    {"cfr": {"domain_weight": 250.0}, "fusion": {"domain_weight": 250.0}},
    {"cfr": {"domain_weight": 1000.0}},
)


@dataclass(frozen=True)
class Setting:
    """One tuning setting: what is erased and kept, the sections every variant shares, and how it is reported."""

    erased: list[dict]
    kept: list[dict]
    shared: dict
    variants: tuple[dict, ...]
    keys: tuple[str, ...]  # the metrics of its table
    what: str  # its table's description of the concepts
    stem: str  # results file name, without extension


def setting(suite: str) -> Setting:
    """The tuning setting of ``suite`` (objects or identities)."""
    if suite == "objects":
        return Setting([object_concept(c) for c in OBJECT_CLASSES[:5]], [object_concept(c) for c in OBJECT_CLASSES[5:]],
                       {}, OBJECT_VARIANTS, ("acc_e", "acc_s", "acc_g", "h_o"),
                       f"Erased: {', '.join(OBJECT_CLASSES[:5])}; kept: the other 5.", "tuning")
    kept = [identity_concept(n) for n in IDENTITIES[:100]]
    erased = [identity_concept(n) for n in IDENTITIES[100:200]]
    return Setting(erased, kept, {"prior": retain(kept)}, IDENTITY_VARIANTS, ("acc_e", "acc_s", "h_c"),
                   "Erased: identities 100-199; kept and retained: identities 0-99.", "tuning_identities")


def merged(base: dict, over: dict) -> dict:
    """``over``'s sections merged field by field over ``base``'s."""
    return base | {k: {**base.get(k, {}), **v} for k, v in over.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=("objects", "identities"), default="objects")
    ap.add_argument("--variant", action="append", default=None, help="a partial config as JSON (repeatable)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--store", default="artifacts/bench-quality")
    args = ap.parse_args()
    st = setting(args.suite)
    variants = [json.loads(v) for v in args.variant] if args.variant else list(st.variants)
    rows, reference = [], None
    for i, over in enumerate(variants):
        label = json.dumps(over, sort_keys=True) if over else "preset"
        name = f"q-tuning-{i}" if args.suite == "objects" else f"q-tuning-{args.suite}-{i}"
        report, s = erase(make_config(args.suite, name, st.erased, args.store, **merged(st.shared, over)))
        ev = evaluate(report.output, st.erased, st.kept, args.seeds, args.store)
        rows.append(row(label, report, ev, s))
        reference = row("original model", None, ev, None, "reference_metrics")
        print(rows[-1], flush=True)
    from miniworld.paths import PIPELINE_DIR
    from tasks._cache import files_digest

    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": args.seeds, "rows": rows, "reference": reference,
              "model_digest": files_digest(PIPELINE_DIR), "erased": [c["name"] for c in st.erased],
              "command": "python -m benchmarks.tuning" + (f" --suite {args.suite}" if args.suite != "objects" else "")
              + (f" --seeds {args.seeds}" if args.seeds != 4 else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{st.stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"# {args.suite.capitalize()} preset: variants tried", "",
          f"`{result['command']}` ({result['date']}, {args.seeds} seeds per prompt, model {result['model_digest'][:12]}). "
          f"{st.what} Accuracies in %.", "",
          "| variant | " + " | ".join(st.keys) + " |", "|---|" + "---|" * len(st.keys)]
    md += [f"| {r['setting']} | " + " | ".join(str(r[k]) for k in st.keys) + " |" for r in [*rows, reference]]
    (RESULTS / f"{st.stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
