"""Benchmark: wall time of one MACE LoRA training step (batch 1), through ``train_concept_lora``.

Configurations (random weights; nothing downloaded):

- ``sd14``: a UNet with Stable Diffusion v1.4's shapes (block_out (320, 640, 1280, 1280), 2 layers per block,
  cross_attention_dim 768, attention_head_dim 8; 859.5 M parameters), 64x64 latents (512 px images), a
  1-layer 768-wide CLIP text tower and a small 8x VAE (the VAE runs once before the loop, so it does not enter
  the step time);
- ``miniworld``: the shipped miniworld pipeline if ``miniworld/weights/pipeline`` exists, else
  ``miniworld.models.make_unet()`` with a small VAE/text tower of its width (a config of the same size).

Each configuration runs in its own subprocess (so peak RSS is per configuration) and trains ``--steps`` steps;
the reported step time is the median of the steps after the first (the first includes lazy init).
Writes ``benchmarks/results/lora_step.json`` and ``.md``.

    python -m benchmarks.lora_step            # both configurations, 3 steps each
    python -m benchmarks.lora_step --only miniworld --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def _tokenizer():
    from transformers import CLIPTokenizer

    from tests.helpers.tokenizers import write_clip_vocab

    vocab, merges = write_clip_vocab(Path(tempfile.gettempdir()) / "mace_bench_clip_bpe")
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def _small_vae(n_blocks: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32,) * n_blocks, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n_blocks, up_block_types=("UpDecoderBlock2D",) * n_blocks,
    )


def _text_encoder(width: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
        num_attention_heads=max(1, width // 64), max_position_embeddings=77,
    ))


def _build(name: str):
    """(pipeline, image size in pixels, description) for configuration ``name``."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    if name == "sd14":
        unet = UNet2DConditionModel(**SD14_UNET)
        pipe = StableDiffusionPipeline(
            vae=_small_vae(4), text_encoder=_text_encoder(768), tokenizer=_tokenizer(), unet=unet,
            scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        return pipe, 512, "SD v1.4 UNet shapes (random weights), 64x64 latents"
    if name == "miniworld":
        from miniworld.paths import PIPELINE_DIR

        if (PIPELINE_DIR / "model_index.json").is_file():
            from mace_core.models import load_pipeline

            pipe = load_pipeline("miniworld")
            size = pipe.unet.config.sample_size * pipe.vae_scale_factor
            return pipe, size, f"shipped miniworld pipeline ({PIPELINE_DIR.name})"
        from miniworld.models import TEXT_DIM, make_unet

        unet = make_unet()
        pipe = StableDiffusionPipeline(
            vae=_small_vae(4), text_encoder=_text_encoder(TEXT_DIM), tokenizer=_tokenizer(), unet=unet,
            scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        size = unet.config.sample_size * pipe.vae_scale_factor
        return pipe, size, "miniworld.models.make_unet() (weights not shipped yet), random weights"
    raise ValueError(f"unknown configuration {name!r}: use sd14 or miniworld")


def run_one(name: str, steps: int) -> dict:
    """Build configuration ``name`` and time ``steps`` LoRA steps (in this process)."""
    import torch

    from mace_core.config import LoraConfig
    from mace_core.lora import LoraTrainingData, train_concept_lora
    from mace_core.unet_layers import cross_attention_projections

    t0 = time.perf_counter()
    pipe, size, description = _build(name)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    masks = torch.zeros(2, 1, size, size)
    masks[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    data = LoraTrainingData(images, masks, ["a photo of the ship", "a ship at sea"], ["ship", "ship"])
    cfg = LoraConfig(steps=steps, batch_size=1, learning_rate=1e-5)
    marks: list[float] = []
    losses: list[float] = []
    t_start = time.perf_counter()

    def progress(step: int, total: int, loss: float) -> None:
        marks.append(time.perf_counter())
        losses.append(loss)

    train_concept_lora(pipe, {}, data, cfg, seed=0, progress=progress)
    total_s = time.perf_counter() - t_start
    step_s = [b - a for a, b in zip(marks[:-1], marks[1:])]
    unet = pipe.unet
    return {
        "config": name,
        "description": description,
        "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "cross_attention_projections": len(cross_attention_projections(unet)),
        "context_dim": unet.config.cross_attention_dim,
        "latent_hw": size // pipe.vae_scale_factor,
        "image_px": size,
        "batch_size": 1,
        "steps": steps,
        "build_s": round(build_s, 2),
        "train_total_s": round(total_s, 2),
        "setup_plus_first_step_s": round(marks[0] - t_start, 2),
        "later_step_s": [round(s, 3) for s in step_s],
        "step_s_median": round(statistics.median(step_s), 3) if step_s else None,
        "losses": [round(v, 5) for v in losses],
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["sd14", "miniworld"], default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.steps)))
        return

    import torch

    rows = []
    load_before = os.getloadavg()
    for name in [args.only] if args.only else ["miniworld", "sd14"]:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.lora_step", "--child", name, "--steps", str(args.steps)],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if proc.returncode != 0:
            rows.append({"config": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed",
                         "returncode": proc.returncode})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import diffusers
    import peft

    result = {
        "benchmark": "lora_step",
        "command": "python -m benchmarks.lora_step" + (f" --only {args.only}" if args.only else "")
        + f" --steps {args.steps}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "diffusers": diffusers.__version__, "peft": peft.__version__, "device": "cpu"},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lora_step.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# LoRA training step time (batch 1, CPU)", "",
        f"Command: `{result['command']}`  ", f"Machine: {result['machine']}  ", f"Date: {result['date']}  ",
        f"1-minute load average before/after (shared 2-core machine): {result['load_average_1m_before_after']}", "",
        "| config | UNet params (M) | attn2 projections | d | latent | setup + step 1 (s) | later steps (s) "
        "| median step (s) | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['config']} | {r['unet_params_M']} | {r['cross_attention_projections']} | {r['context_dim']} "
            f"| {r['latent_hw']}x{r['latent_hw']} | {r['setup_plus_first_step_s']} | {r['later_step_s']} "
            f"| {r['step_s_median']} | {r['peak_rss_GB']} |"
        )
    lines += ["", "Setup = private UNet copy, peft injection, prompt encoding and one VAE pass over the images.",
              "Official MACE (GPU, SD v1.4) reports ~3.4 it/s in demo.ipynb (spec §5)."]
    for r in rows:
        if "description" in r:
            lines.append(f"- {r['config']}: {r['description']}")
    (RESULTS / "lora_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
