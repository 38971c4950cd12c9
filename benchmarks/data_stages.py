"""Benchmark of the data stages (issue 6): prior throughput, mask timing/quality, per-concept stage times.

Parts (random weights everywhere; nothing downloaded):

- ``prior``: captions/s of ``mace_core.text_stats.prior_gram`` with (a) a text encoder of CLIP ViT-L/14's shape
  (hidden 768, 12 layers, 12 heads, MLP 3072, the real 49,408-token BPE tokenizer) in a minimal SD-1 pipeline,
  and (b) the shipped miniworld text encoder when ``miniworld/weights/pipeline`` has one; the projection for
  COCO's 617k captions (train2014 + val2014) follows. Captions come from the miniworld corpus.
- ``captions``: read throughput of ``mace_core.captions.read_captions`` (parquet, 200k captions).
- ``augment``: per-concept time of the template backend and of the LLM backend's client-side work against a
  local scripted server (model latency excluded: it depends on the server).
- ``gsam``: per-image time of Grounded-SAM (GroundingDINO SwinT-OGC at the trained 800 px, SAM ``--sam-type``)
  on a 512x512 image; per concept = 8 images.
- ``masks``: the default attention masker on the shipped miniworld, against the renderer's ground truth: IoU on
  single-object renders (with a mismatched-pairs and a constant-mask baseline) and, on two-object renders, how
  often a subject's attention saliency is heavier on it than on the other subject (0.5 = chance).
- ``stages``: seconds per concept of each stage, from a cold one-concept erase with the ``miniworld-objects``
  preset (flows.erase; the set stages CFR, fusion and export are listed too).

    python -m benchmarks.data_stages                         # CPU, all parts
    python -m benchmarks.data_stages --device cuda --sam-type vit_h --out-suffix _h100

Writes ``benchmarks/results/data_stages{suffix}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
COCO_CAPTIONS = 616_767  # captions_train2014 (414,113) + captions_val2014 (202,654)
CLIP_L = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def _tokenizer():
    from transformers import CLIPTokenizer

    from tests.helpers.tokenizers import write_clip_vocab

    vocab, merges = write_clip_vocab(Path(tempfile.gettempdir()) / "mace_bench_clip_bpe")
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def clip_l_pipeline(device: str):
    """SD-1 pipeline whose text encoder has CLIP ViT-L/14's text-tower shape (123 M params), random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
        eos_token_id=49407, pad_token_id=1, **CLIP_L,
    ))
    unet = UNet2DConditionModel(  # tiny: only its cross_attention_dim matters for the prior
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(block_out_channels=(16,), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=_tokenizer(), unet=unet, scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe.to(device)


def bench_prior(pipe, captions: list[str], batch_size: int) -> dict:
    from mace_core.text_stats import prior_gram

    prior_gram(pipe, captions[:batch_size], batch_size)  # warm-up (lazy init, allocator)
    if str(pipe.device).startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    acc = prior_gram(pipe, captions, batch_size)
    dt = time.perf_counter() - t0
    rate = len(captions) / dt
    return {
        "captions": len(captions), "batch_size": batch_size, "seconds": round(dt, 2),
        "captions_per_s": round(rate, 1), "token_vectors": acc.count, "d": acc.d,
        "coco_617k_projected_h": round(COCO_CAPTIONS / rate / 3600, 2),
    }


def bench_captions() -> dict:
    from mace_core.captions import read_captions
    from miniworld.paths import CAPTIONS_PATH

    t0 = time.perf_counter()
    n = sum(1 for _ in read_captions(CAPTIONS_PATH))
    dt = time.perf_counter() - t0
    return {"file": "miniworld/data/captions.parquet", "captions": n, "seconds": round(dt, 2),
            "captions_per_s": round(n / dt)}


def bench_augment() -> dict:
    from mace_core.augment import LlmClientSettings, llm_prompt_pairs
    from mace_core.concepts import Concept
    from mace_core.prompts import template_prompt_pairs
    from tests.data_stages.conftest import ScriptedLlmServer

    concept = Concept(name="van gogh", type="style", mapping="art")
    tok = _tokenizer()
    t0 = time.perf_counter()
    template_prompt_pairs(concept, 30)
    t_templates = time.perf_counter() - t0
    server = ScriptedLlmServer()
    server.thread.start()
    prompts = [f"a painting number {i} of a quiet village by van gogh" for i in range(30)]
    server.script((200, json.dumps({"prompts": prompts})))
    settings = LlmClientSettings(base_url=server.url, model="bench")
    llm_prompt_pairs(concept, 30, 0, settings, 0, tok, environ={"MACE_LLM_API_KEY": "x"})  # warm-up import
    t0 = time.perf_counter()
    llm_prompt_pairs(concept, 30, 0, settings, 0, tok, environ={"MACE_LLM_API_KEY": "x"})
    t_llm = time.perf_counter() - t0
    server.httpd.shutdown()
    return {"templates_30_pairs_s": round(t_templates, 4), "llm_30_pairs_client_side_s": round(t_llm, 3),
            "note": "LLM time excludes model latency (local scripted server)"}


def bench_gsam(device: str, sam_type: str, dino_size: int) -> dict:
    import groundingdino
    import numpy as np
    from PIL import Image

    from mace_core.grounded_sam import GroundedSam, boxes_to_xyxy
    from tests.data_stages._gsam_fixtures import write_tiny_bert

    from transformers import BertConfig, BertModel

    config = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    with tempfile.TemporaryDirectory(prefix="bench-bert-") as tmp:  # ~0.4 GB of random BERT-base weights
        # BERT-base shape for the text side (the real checkpoint needs bert-base-uncased)
        bert_dir = Path(tmp) / "bert"
        write_tiny_bert(bert_dir)
        cfg = BertConfig.from_pretrained(bert_dir)
        cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size = 768, 12, 12, 3072
        BertModel(cfg).save_pretrained(bert_dir)
        t0 = time.perf_counter()
        gsam = GroundedSam.load(config, None, bert_dir, None, sam_type, device=device, dino_size=dino_size)
        t_load = time.perf_counter() - t0
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (512, 512, 3), dtype=np.uint8))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    gsam.detect(image, "cat", 0.3, 0.25)  # warm-up
    sync()
    t0 = time.perf_counter()
    boxes, _, _ = gsam.detect(image, "cat", 0.3, 0.25)
    sync()
    t_dino = time.perf_counter() - t0
    xyxy = boxes_to_xyxy(boxes[:4] if len(boxes) else torch.tensor([[0.5, 0.5, 0.5, 0.5]]), 512, 512)
    gsam.segment(np.asarray(image), xyxy)
    sync()
    t0 = time.perf_counter()
    gsam.segment(np.asarray(image), xyxy)
    sync()
    t_sam = time.perf_counter() - t0
    per_image = t_dino + t_sam
    return {"device": device, "dino": f"SwinT-OGC + BERT-base shape, shorter side {dino_size}", "sam": sam_type,
            "load_s": round(t_load, 1), "groundingdino_s": round(t_dino, 2), "sam_s": round(t_sam, 2),
            "per_image_s": round(per_image, 2), "per_concept_8_images_s": round(8 * per_image, 1)}


def bench_masks(device: str, n: int = 64) -> dict:
    """The attention masker on the miniworld, scored against the renderer (miniworld.quality)."""
    from miniworld.quality import attention_localisation, attention_mask_iou, load_pipeline

    pipe = load_pipeline(device=device)
    t0 = time.perf_counter()
    single = attention_mask_iou(pipe, n=n)
    seconds = time.perf_counter() - t0
    return {"single_object": single, "two_objects": attention_localisation(pipe, n=n),
            "seconds_per_image": round(seconds / single["n"], 3)}


def bench_stages(device: str) -> dict:
    """Seconds per concept of each stage: a cold one-concept erase (``cat``) with the miniworld-objects preset."""
    from benchmarks.quality import make_config, object_concept
    from flows.erase import erase

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as store:
        report = erase(make_config("objects", "bench-stages", [object_concept("cat")], store, model={"device": device}))
    return {"config": "configs/miniworld-objects.yaml with the concept cat, cold store",
            "seconds": {r.stage: round(r.seconds, 2) for r in report.stages}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--captions", type=int, default=256, help="captions timed per text encoder")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sam-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--dino-size", type=int, default=800)
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["prior", "captions", "augment", "gsam", "masks", "stages"])
    ap.add_argument("--out-suffix", default="")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mace_core.captions import read_captions
    from miniworld.paths import CAPTIONS_PATH, PIPELINE_DIR

    results: dict = {}
    if "prior" not in args.skip:
        from mace_core.models import load_pipeline

        captions = list(read_captions(CAPTIONS_PATH, max_captions=args.captions + args.batch_size))[args.batch_size :]
        results["prior"] = {"clip_vit_l14_random": bench_prior(clip_l_pipeline(args.device), captions, args.batch_size),
                            "miniworld": bench_prior(load_pipeline(str(PIPELINE_DIR), device=args.device), captions,
                                                     args.batch_size)}
    if "captions" not in args.skip:
        results["captions"] = bench_captions()
    if "augment" not in args.skip:
        results["augment"] = bench_augment()
    if "gsam" not in args.skip:
        results["gsam"] = bench_gsam(args.device, args.sam_type, args.dino_size)
    if "masks" not in args.skip:
        results["masks"] = bench_masks(args.device)
    if "stages" not in args.skip:
        results["stages"] = bench_stages(args.device)
    machine = {"cpu": platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": args.device,
               "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}
    cmd = "python -m benchmarks.data_stages " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in ([], "", None))
    out = {"benchmark": "data_stages", "command": cmd, "machine": machine,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"data_stages{args.out_suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"data_stages{args.out_suffix}.md").write_text(_markdown(out))


def _markdown(out: dict) -> str:
    r = out["results"]
    lines = [f"# Data stages ({out['machine']['device']})", "", f"Command: `{out['command']}`  ",
             f"Machine: {out['machine']}  ", f"Date: {out['date']}", ""]
    if "prior" in r:
        lines += ["## Prior throughput (`text_stats.prior_gram`)", "",
                  "| text encoder | captions | batch | s | captions/s | COCO 617k projected (h) |",
                  "|---|---|---|---|---|---|"]
        for name, v in r["prior"].items():
            if isinstance(v, dict):
                lines.append(f"| {name} | {v['captions']} | {v['batch_size']} | {v['seconds']} "
                             f"| {v['captions_per_s']} | {v['coco_617k_projected_h']} |")
            else:
                lines.append(f"| {name} | {v} | | | | |")
        lines.append("")
    for key, title in (("captions", "Caption reading"), ("augment", "Prompt augmentation per concept"),
                       ("gsam", "Grounded-SAM per image (random weights)")):
        if key in r:
            lines += [f"## {title}", "", *[f"- {k}: {v}" for k, v in r[key].items()], ""]
    if "masks" in r:
        m, two = r["masks"]["single_object"], r["masks"]["two_objects"]
        lines += ["## Attention masker vs renderer masks (miniworld)", "",
                  f"- single-object renders ({m['n']}): IoU {m['iou']}, mismatched pairs {m['mismatched']}, "
                  f"a constant mask (the mean truth) {m['constant']}",
                  f"- two-object renders ({two['maps']} maps): own subject heavier than the other in {two['win_rate']} "
                  f"(chance 0.5); saliency share on own subject {two['own_share']}, on the other {two['other_share']}",
                  f"- {r['masks']['seconds_per_image']} s per image", ""]
    if "stages" in r:
        lines += ["## Seconds per concept of each stage (miniworld)", "", r["stages"]["config"], "",
                  "| stage | s |", "|---|---|", *[f"| {k} | {v} |" for k, v in r["stages"]["seconds"].items()], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
