"""Benchmark: CFR + closed-form fusion wall time and peak extra memory vs the number of concepts.

Compares ``mace_core`` (d x d sufficient statistics, factorised solves; spec 3.2) with a faithful
re-implementation of the official per-layer approach (per-token values materialised for every projection of
every concept, then one solve per layer with an explicit inverse, fp32; spec Stage E/G and section 5) on the
same inputs, at SD1.4 shapes (32 attn2 to_k/to_v, d = 768) and SDXL shapes (140 projections, d = 2048).

Inputs per concept: 30 prompt pairs x 77 tokens of random embeddings (matched pairs: 75 per prompt, as for a
2-token concept), a random rank-1 LoRA on every projection; a general prior Gram from 4,000 random tokens.
To fit 1,000 concepts in RAM, the token data / statistics come from a pool of 4 distinct random concepts used
cyclically (the cost per concept is unchanged: nothing is cached across concepts); every LoRA is distinct.

Each (shape, n, method) runs in a fresh subprocess. Peak extra memory = VmHWM after the timed region minus RSS
before it (inputs already allocated; VmHWM reset via /proc/self/clear_refs). The official approach is skipped
where its materialised values alone would exceed the memory cap or its estimated time exceeds 10 minutes.

Run:  python benchmarks/closed_form.py            (writes benchmarks/results/closed_form.{json,md})
      python benchmarks/closed_form.py --quick    (n in 1, 10 only)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# d_out of the 16 SD1.4 attn2 blocks in spec order (down, up, mid); to_v then to_k
SD14_BLOCKS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]
# SDXL attn2: down1 2x2 (640), down2 2x10 (1280), up0 3x10 (1280), up1 3x2 (640), mid 1x10 (1280)
SDXL_BLOCKS = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
SHAPES = {"sd14": (768, SD14_BLOCKS), "sdxl": (2048, SDXL_BLOCKS)}
N_PROMPTS, L, N_MATCHED, POOL = 30, 77, 75, 4
LAM, PRIOR_W = 0.1, 0.5
MEM_CAP_GB = 8.0
TIME_CAP_S = 600.0
OFFICIAL_GFLOPS = 40.0  # conservative fp32 rate on 2 cores, for skip estimates only


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_inputs(shape: str, n: int, seed: int = 0):
    """Random W0, token pool, per-concept stats (pooled) and distinct rank-1 LoRAs."""
    from types import SimpleNamespace

    from mace_core.text_stats import concept_statistics

    d, blocks = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    names = [f"b{i}.attn2.to_v" for i in range(len(blocks))] + [f"b{i}.attn2.to_k" for i in range(len(blocks))]
    d_outs = blocks + blocks
    W0 = {nm: torch.randn(o, d, generator=gen) / d**0.5 for nm, o in zip(names, d_outs)}
    pool = []
    for _ in range(POOL):
        erased = torch.randn(N_PROMPTS, L, d, generator=gen)
        mapping = erased.clone()
        mapping[:, 4:] = torch.randn(N_PROMPTS, L - 4, d, generator=gen)  # prefix of 4 shared (causal encoder)
        i_idx = list(range(4)) + list(range(6, L))  # 2-token concept excluded
        matches = [(i_idx, i_idx)] * N_PROMPTS
        stats = concept_statistics(erased, mapping, matches)
        pool.append(SimpleNamespace(erased=erased, mapping=mapping, i_idx=i_idx, stats=stats))
    prior_tokens = torch.randn(4000, d, generator=gen, dtype=torch.float64)
    P = prior_tokens.T @ prior_tokens
    loras = []
    for _ in range(n):
        factors = {nm: (torch.randn(1, d, generator=gen) / d**0.5, torch.randn(o, 1, generator=gen) * 0.01)
                   for nm, o in zip(names, d_outs)}
        loras.append(SimpleNamespace(factors=factors, scale=1.0))
    return W0, pool, P, loras


def run_ours(shape: str, n: int):
    from mace_core import cfr, fuse
    from mace_core.text_stats import ConceptStats

    W0, pool, P, loras = build_inputs(shape, n)
    d = SHAPES[shape][0]
    concept_stats = [pool[k % POOL].stats for k in range(n)]
    gc.collect()
    base = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    # CFR: sum per-concept stats, prior term, shared remap, W_cfr = W0 M
    total = ConceptStats.zeros(d)
    for s in concept_stats:
        total = total + s
    K_cfr = cfr.prior_term(P, None, PRIOR_W, 0.0)
    M = cfr.cfr_remap(total.A, total.B, K_cfr, LAM)
    W_cfr = cfr.refine_weights(W0, M)
    t1 = time.perf_counter()
    # fusion (joint mode: every concept's base is the same M)
    terms = [fuse.FusionTerm(M, s.G, lo) for s, lo in zip(concept_stats, loras)]
    K_fuse = cfr.prior_term(P, None, PRIOR_W, 0.0)
    W_fin = fuse.fuse_closed_form(W0, M, terms, K_fuse, LAM)
    t2 = time.perf_counter()
    peak = _rss_kb("VmHWM") - base
    del W_cfr
    return {"cfr_s": t1 - t0, "fusion_s": t2 - t1, "total_s": t2 - t0, "peak_extra_mb": peak / 1024,
            "_W_fin": W_fin}


def official_estimate(shape: str, n: int) -> tuple[float, float]:
    """(GB of materialised values, estimated seconds) of the official approach."""
    d, blocks = SHAPES[shape]
    rows = 2 * sum(blocks)
    tokens_cfr = N_PROMPTS * N_MATCHED
    tokens_fuse = N_PROMPTS * L
    gb = n * max(tokens_cfr, tokens_fuse) * rows * 4 / 1e9
    flops = n * (tokens_cfr + tokens_fuse) * rows * d * 2 * 2 + 2 * rows * d * d * 2 + 2 * len(blocks) * 2 * d**3
    return gb, flops / (OFFICIAL_GFLOPS * 1e9)


def run_official(shape: str, n: int):
    """Per-layer official formulation (fp32, explicit inverse), values materialised for every layer."""
    W0, pool, P, loras = build_inputs(shape, n)
    d = SHAPES[shape][0]
    P32 = P.float()
    cache = {nm: W @ (PRIOR_W * P32) for nm, W in W0.items()}  # Stage C cache mat1 (precomputed input)
    gc.collect()
    base = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    eye = torch.eye(d)
    # Stage E: contexts and per-layer values of every concept (prepare_k_v, all_words=False)
    contexts, values = [], []
    for k in range(n):
        c = pool[k % POOL]
        ctx = c.erased[:, c.i_idx].reshape(-1, d)
        tgt = c.mapping[:, c.i_idx].reshape(-1, d)
        contexts.append(ctx)
        values.append({nm: tgt @ W.T for nm, W in W0.items()})
    W_cfr = {}
    for nm, W in W0.items():
        # prior applied once (the official normal path would apply it twice, spec 6.1; same cost)
        mat1 = LAM * W + cache[nm]
        mat2 = LAM * eye + PRIOR_W * P32
        for ctx, val in zip(contexts, values):
            mat1 = mat1 + val[nm].T @ ctx
            mat2 = mat2 + ctx.T @ ctx
        W_cfr[nm] = mat1 @ torch.inverse(mat2)
    del contexts, values
    t1 = time.perf_counter()
    # Stage G: all 77 tokens of every erased prompt, values (W_cfr + dW_k) e for every layer
    contexts, values = [], []
    for k in range(n):
        e = pool[k % POOL].erased.reshape(-1, d)
        lo = loras[k]
        contexts.append(e)
        values.append({nm: e @ (W_cfr[nm] + lo.scale * lo.factors[nm][1] @ lo.factors[nm][0]).T for nm in W0})
    W_fin = {}
    for nm in W0:
        mat1 = LAM * W_cfr[nm] + cache[nm]
        mat2 = LAM * eye + PRIOR_W * P32
        for e, val in zip(contexts, values):
            mat1 = mat1 + val[nm].T @ e
            mat2 = mat2 + e.T @ e
        W_fin[nm] = mat1 @ torch.inverse(mat2)
    t2 = time.perf_counter()
    peak = _rss_kb("VmHWM") - base
    return {"cfr_s": t1 - t0, "fusion_s": t2 - t1, "total_s": t2 - t0, "peak_extra_mb": peak / 1024,
            "_W_fin": W_fin}


def child(shape: str, n: int, method: str) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if method == "ours":
        res = run_ours(shape, n)
    else:
        res = run_official(shape, n)
        if n <= 10:  # cross-check: same inputs through mace_core
            ours = run_ours(shape, n)["_W_fin"]
            num = sum(float((res["_W_fin"][k].double() - ours[k].double()).norm() ** 2) for k in ours) ** 0.5
            den = sum(float(ours[k].double().norm() ** 2) for k in ours) ** 0.5
            res["rel_diff_vs_ours"] = num / den
    res.pop("_W_fin")
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=3, metavar=("SHAPE", "N", "METHOD"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", default="sd14,sdxl")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "closed_form"))
    ap.add_argument("--merge", nargs="+", help="combine rows of earlier JSON results into --out")
    args = ap.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(Path(f).read_text())["rows"]]
        write_results(rows, args.out, args.quick)
        return
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    ns = [1, 10] if args.quick else [1, 10, 100, 1000]
    rows = []
    for shape in args.shapes.split(","):
        for n in ns:
            for method in ("ours", "official"):
                row = {"shape": shape, "d": SHAPES[shape][0], "projections": 2 * len(SHAPES[shape][1]),
                       "n_concepts": n, "method": method}
                if method == "official":
                    gb, est = official_estimate(shape, n)
                    if gb > MEM_CAP_GB or est > TIME_CAP_S:
                        row["skipped"] = (f"values alone need {gb:.1f} GB (cap {MEM_CAP_GB:.0f} GB), "
                                          f"estimated {est:.0f} s (cap {TIME_CAP_S:.0f} s)")
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        continue
                proc = subprocess.run([sys.executable, __file__, "--child", shape, str(n), method],
                                      capture_output=True, text=True, cwd=ROOT)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    row["error"] = (proc.stderr or proc.stdout)[-500:]
                else:
                    row.update(json.loads(line[-1][7:]))
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_results(rows, args.out, args.quick)


def write_results(rows: list[dict], out: str, quick: bool = False) -> None:
    """Add ratios, then write ``out.json`` and ``out.md``."""
    for row in rows:
        if row["method"] == "official" and "total_s" in row:
            ours = next(r for r in rows if r["method"] == "ours" and r["shape"] == row["shape"]
                        and r["n_concepts"] == row["n_concepts"])
            if "total_s" in ours:
                row["speedup_ours_vs_official"] = row["total_s"] / ours["total_s"]
                row["memory_ratio_official_vs_ours"] = row["peak_extra_mb"] / max(ours["peak_extra_mb"], 1.0)
    meta = {"torch": torch.__version__, "machine": os.environ.get("BENCH_MACHINE", platform.node()),
            "threads": int(os.environ.get("BENCH_THREADS", "2")),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "command": "python benchmarks/closed_form.py" + (" --quick" if quick else ""),
            "lam": LAM, "prior_weight": PRIOR_W, "prompts_per_concept": N_PROMPTS, "tokens": L,
            "mem_cap_gb": MEM_CAP_GB, "time_cap_s": TIME_CAP_S}
    Path(out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Closed-form CFR + fusion benchmark", "",
             f"`{meta['command']}` — {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads (CPU only). "
             "Ours: float64 d x d statistics + factorised solves (mace_core). Official: per-layer, per-token values "
             "materialised for every projection, fp32 explicit inverses (faithful re-implementation). "
             "Peak extra memory = peak RSS above the (already allocated) inputs.", "",
             "| shape | concepts | method | CFR s | fusion s | total s | peak extra MB | official/ours time "
             "| official/ours mem | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "total_s" in r:
            sp = f"{r['speedup_ours_vs_official']:.1f}x" if "speedup_ours_vs_official" in r else ""
            mr = f"{r['memory_ratio_official_vs_ours']:.1f}x" if "memory_ratio_official_vs_ours" in r else ""
            note = f"rel diff vs ours {r['rel_diff_vs_ours']:.1e}" if "rel_diff_vs_ours" in r else ""
            lines.append(f"| {r['shape']} | {r['n_concepts']} | {r['method']} | {r['cfr_s']:.2f} | {r['fusion_s']:.2f} "
                         f"| {r['total_s']:.2f} | {r['peak_extra_mb']:.0f} | {sp} | {mr} | {note} |")
        else:
            lines.append(f"| {r['shape']} | {r['n_concepts']} | {r['method']} | - | - | - | - | | | "
                         f"{r.get('skipped') or 'error: ' + r.get('error', '')[:80]} |")
    Path(out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
