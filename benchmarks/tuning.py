"""What was tuned for the objects preset: the ablation's 5-class erase under config variants, measured.

    python -m benchmarks.tuning                                   # the default variants below
    python -m benchmarks.tuning --variant '{"cfr": {"lam": 1000}}' --seeds 4

Each variant is a partial config (sections merged over ``configs/miniworld-objects.yaml``); each row erases
airplane, automobile, bird, cat and deer, keeps dog, frog, horse, ship and truck (the last variant also retains
them, as the quick start does), and is evaluated like the
quality benchmark's ablation suite (same store, so LoRAs and evaluation images are shared). Writes
``benchmarks/results/tuning.json`` and ``tuning.md``.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.quality import RESULTS, erase, evaluate, make_config, object_concept, row
from miniworld.world import OBJECT_CLASSES

DEFAULT_VARIANTS: tuple[dict, ...] = (
    {},  # the shipped preset: lam 100, no prior
    {"lora": {"enabled": False}},
    {"lora": {"enabled": False}, "cfr": {"lam": 1000.0}},
    {"lora": {"enabled": False}, "cfr": {"lam": 10000.0}},
    {"lora": {"enabled": False}, "cfr": {"prior_weight": 0.001}},
    {"lora": {"enabled": False}, "cfr": {"prior_weight": 0.01}},
    {"cfr": {"lam": 1000.0}},
    {"cfr": {"lam": 1000.0}, "fusion": {"lam": 1000.0}},
    {"cfr": {"prior_weight": 0.001}, "fusion": {"prior_weight": 0.001}},
    # the quick start's setting: retain the kept classes (domain prior) plus a light 10k-caption general prior
    {"prior": {"max_captions": 10000, "retain": list(OBJECT_CLASSES[5:])},
     "cfr": {"prior_weight": 0.0002, "domain_weight": 250.0},
     "fusion": {"prior_weight": 0.0002, "domain_weight": 250.0}},
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=None, help="a partial config as JSON (repeatable)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--store", default="artifacts/bench-quality")
    args = ap.parse_args()
    variants = [json.loads(v) for v in args.variant] if args.variant else list(DEFAULT_VARIANTS)
    erased = [object_concept(c) for c in OBJECT_CLASSES[:5]]
    kept = [object_concept(c) for c in OBJECT_CLASSES[5:]]
    rows, reference = [], None
    for i, over in enumerate(variants):
        label = json.dumps(over, sort_keys=True) if over else "preset"
        report, s = erase(make_config("objects", f"q-tuning-{i}", erased, args.store, **over))
        ev = evaluate(report.output, erased, kept, args.seeds, args.store)
        rows.append(row(label, report, ev, s))
        reference = row("original model", None, ev, None, "reference_metrics")
        print(rows[-1], flush=True)
    from miniworld.paths import PIPELINE_DIR
    from tasks._cache import files_digest

    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": args.seeds, "rows": rows, "reference": reference,
              "model_digest": files_digest(PIPELINE_DIR), "erased": [c["name"] for c in erased],
              "command": "python -m benchmarks.tuning" + (f" --seeds {args.seeds}" if args.seeds != 4 else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(result, indent=1) + "\n")
    keys = ("acc_e", "acc_s", "acc_g", "h_o")
    md = ["# Objects preset: variants tried", "",
          f"`{result['command']}` ({result['date']}, {args.seeds} seeds per prompt, model {result['model_digest'][:12]}). "
          f"Erased: {', '.join(result['erased'])}; kept: the other 5. Accuracies in %.", "",
          "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    md += [f"| {r['setting']} | " + " | ".join(str(r[k]) for k in keys) + " |" for r in [*rows, reference]]
    (RESULTS / "tuning.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
