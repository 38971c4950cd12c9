"""Benchmark: does ``bash miniworld/train_all.sh`` reproduce the shipped miniworld weights, and in how long?

Clones this checkout's HEAD into a work directory, runs the whole training chain there in one go (it rewrites the
clone's ``miniworld/weights``, never this checkout's), then compares every shipped weight file with the clone's
(sha256; for safetensors that differ, the largest absolute difference of any tensor), compares the generation
quality the chain measured with the shipped ``quality/quality.json`` (all figures but the timing), and reads each
model's measured time from the clone's training summaries. About 2-3 h on 2 cores.

    python -m benchmarks.reproduce_weights                                      # clone, train, compare
    python -m benchmarks.reproduce_weights --workdir /tmp/chain --compare-only  # compare a finished clone

Writes ``benchmarks/results/reproduce_weights.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from miniworld.model_card import MODELS, PLOTTED, TARGETS, elapsed_seconds, run_seconds

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WEIGHTS = Path("miniworld") / "weights"
TIMING = Path("miniworld") / "_train" / "chain_timing.json"
# What the chain measures rather than trains: the card, the copied logs and the quality report hold wall times.
MEASURED_NOT_TRAINED = ("README.md", "logs/", "quality/")
TIMING_FIGURES = ("seconds_for_8_images",)


def weight_files(root: Path) -> list[str]:
    """The shipped weight files under ``root/miniworld/weights``, relative to that directory."""
    base = root / WEIGHTS
    files = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    return sorted(rel for rel in files if not rel.startswith(MEASURED_NOT_TRAINED))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def max_abs_difference(a: Path, b: Path) -> float | None:
    """Largest |a - b| over the tensors of two safetensors files (None: their tensor names or shapes differ)."""
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape for k in ta):
        return None
    return max((float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if ta[k].numel()), default=0.0)


def compare_weights(shipped: Path, trained: Path) -> list[dict]:
    """One row per shipped weight file: identical or not, and how far apart."""
    rows = []
    for rel in weight_files(shipped):
        a, b = shipped / WEIGHTS / rel, trained / WEIGHTS / rel
        row: dict = {"file": rel, "bytes": a.stat().st_size, "identical": b.exists() and sha256(a) == sha256(b)}
        if not b.exists():
            row["note"] = "missing from the chain's output"
        elif not row["identical"] and rel.endswith(".safetensors"):
            row["max_abs_difference"] = max_abs_difference(a, b)
        rows.append(row)
    return rows


def compare_quality(shipped: Path, trained: Path) -> dict:
    """The chain's generation-quality figures beside the shipped ones (timing figures apart: they vary by machine)."""
    path = Path("quality") / "quality.json"
    a = json.loads((shipped / WEIGHTS / path).read_text())["figures"]
    b_file = trained / WEIGHTS / path
    b = json.loads(b_file.read_text())["figures"] if b_file.exists() else {}
    rows = {k: {"shipped": a[k], "chain": b.get(k), "equal": b.get(k) == a[k]} for k in a if k not in TIMING_FIGURES}
    for k, target in TARGETS.items():
        if k in rows:
            rows[k] |= {"target": target, "chain_meets_target": b.get(k) is not None and b[k] >= target}
    return rows


def _loss_rows(path: Path) -> dict[str, dict[str, str]]:
    return {r["step"]: r for r in csv.DictReader(path.open())} if path.exists() else {}


def compare_losses(shipped: Path, trained: Path) -> dict[str, dict]:
    """Per model, the loss curves side by side: the first logged step whose values differ (None: every shared
    step agrees to the logged digits) and the final value of the model's main loss column in each."""
    out = {}
    for m in MODELS:
        a = _loss_rows(shipped / WEIGHTS / "logs" / f"{m}_loss.csv")
        b = _loss_rows(trained / "miniworld" / "_train" / m / "loss.csv")
        if not a or not b:
            continue
        column = PLOTTED.get(m, "loss")
        steps = [s for s in b if s in a]
        first = next((s for s in steps if any(b[s][k] != a[s][k] for k in a[s] if k in b[s] and k != "seconds")), None)
        last = steps[-1] if steps else None
        out[m] = {"column": column, "steps_compared": len(steps), "first_differing_step": first, "last_step": last,
                  "shipped_last": float(a[last][column]) if last else None,
                  "chain_last": float(b[last][column]) if last else None}
    return out


def cpu_description() -> str:
    """The CPU model and the vector extensions that decide which MKL/oneDNN kernels run (and so the last bits)."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    extensions = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile") if f in flags]
    return (f"{model} ({platform.machine()}, {os.cpu_count()} CPUs; torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; {' '.join(extensions) or 'no AVX2'})")


def training_times(trained: Path) -> dict:
    """Per-model seconds (loop + setup) from the clone's summaries, the card's elapsed figure, and the chain's wall
    time end to end when this benchmark ran it (corpus render and quality measurement included)."""
    summaries = {}
    for m in MODELS:
        path = trained / "miniworld" / "_train" / m / "summary.json"
        if path.exists():
            summaries[m] = json.loads(path.read_text())
    timing = trained / TIMING
    return {
        "per_model_seconds": {m: round(run_seconds(s), 1) for m, s in summaries.items()},
        "sessions": {m: s.get("sessions", 1) for m, s in summaries.items()},
        "card_elapsed_seconds": round(elapsed_seconds(summaries), 1),
        "chain": json.loads(timing.read_text()) if timing.exists() else None,
    }


def run_chain(workdir: Path) -> None:
    """Clone HEAD into ``workdir`` and run train_all.sh there, timed."""
    if workdir.exists():
        raise SystemExit(f"{workdir} exists: remove it, or pass --compare-only to compare what it holds")
    subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    start = time.time()
    env = os.environ | {"PYTHON": sys.executable}
    subprocess.run(["bash", "miniworld/train_all.sh"], cwd=workdir, check=True, env=env)
    (workdir / TIMING).write_text(json.dumps({"started": start, "finished": time.time(),
                                              "seconds": round(time.time() - start, 1)}) + "\n")


def write_report(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reproduce_weights.json").write_text(json.dumps(result, indent=1) + "\n")
    t, rows = result["times"], result["weights"]
    md = ["# Reproducing the shipped miniworld weights with `bash miniworld/train_all.sh`", "",
          f"`{result['command']}` ({result['date']}; {result['machine']}; clone of {result['commit'][:12]}).", "",
          f"**{sum(r['identical'] for r in rows)} of {len(rows)} weight files are byte-identical to the shipped "
          "ones.**",
          "", "| file | MB | identical | max abs difference |", "|---|---|---|---|"]
    md += [f"| {r['file']} | {r['bytes'] / 2**20:.2f} | {'yes' if r['identical'] else '**no**'} | "
           f"{r.get('max_abs_difference', r.get('note', '-'))} |" for r in rows]
    md += ["", "Loss curves, the chain's `_train/<model>/loss.csv` against the shipped `logs/<model>_loss.csv`:", "",
           "| model | logged steps compared | first step that differs | last step | shipped | chain |",
           "|---|---|---|---|---|---|"]
    md += [f"| {m} | {v['steps_compared']} | {v['first_differing_step'] or 'none'} | {v['last_step']} | "
           f"{v['column']} {v['shipped_last']} | {v['chain_last']} |" for m, v in result["losses"].items()]
    md += ["", "Generation quality measured by the chain (`miniworld.quality`) against the shipped report:", "",
           "| figure | shipped | chain | equal | target | chain meets it |", "|---|---|---|---|---|---|"]
    md += [f"| {k} | {v['shipped']} | {v['chain']} | {'yes' if v['equal'] else '**no**'} | "
           f"{'>= ' + str(v['target']) if 'target' in v else '-'} | "
           f"{('yes' if v['chain_meets_target'] else '**no**') if 'target' in v else '-'} |"
           for k, v in result["quality"].items()]
    md += ["", "Training time on this machine (loop + setup per model, from the clone's "
           "`_train/<model>/summary.json`):",
           "", "| model | seconds | sessions |", "|---|---|---|"]
    md += [f"| {m} | {s} | {t['sessions'][m]} |" for m, s in t["per_model_seconds"].items()]
    md += ["", f"Elapsed by the model card's rule (vae and clip side by side): "
           f"{t['card_elapsed_seconds'] / 3600:.2f} h."]
    if t["chain"]:
        md.append(f"`train_all.sh` end to end, corpus render and quality measurement included: "
                  f"{t['chain']['seconds'] / 3600:.2f} h ({t['chain']['seconds']:.0f} s).")
    (RESULTS / "reproduce_weights.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mace-reproduce-weights"),
                    help="the clone the chain runs in (must not exist unless --compare-only)")
    ap.add_argument("--compare-only", action="store_true", help="compare the outputs a finished clone holds")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    if args.compare_only and not (workdir / WEIGHTS).is_dir():
        ap.error(f"{workdir} has no {WEIGHTS}: give the clone that train_all.sh ran in")
    if not args.compare_only:
        run_chain(workdir)
    commit = subprocess.run(["git", "-C", str(workdir), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit,
        "machine": cpu_description(),
        "command": "python -m benchmarks.reproduce_weights"
                   + (f" --workdir {args.workdir} --compare-only" if args.compare_only else ""),
        "weights": compare_weights(REPO, workdir), "losses": compare_losses(REPO, workdir),
        "quality": compare_quality(REPO, workdir),
        "times": training_times(workdir),
    }
    write_report(result)


if __name__ == "__main__":
    main()
