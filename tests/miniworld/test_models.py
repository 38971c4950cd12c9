"""The shipped miniworld models: diffusers format, size budget, classifier accuracy, attention masks vs truth."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from miniworld.paths import CLASSIFIER_DIR, CLIP_DIR, HELDOUT_CAPTIONS_PATH, PIPELINE_DIR, WEIGHTS_DIR


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR), local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def heldout_single():
    """Held-out renders with one subject: (images uint8 [N,32,32,3], masks bool [N,32,32], rows)."""
    from miniworld.corpus import spec_of
    from miniworld.render import render

    rows = [r for r in pq.read_table(HELDOUT_CAPTIONS_PATH).slice(0, 1500).to_pylist()
            if len(spec_of(r).subjects) == 1][:1000]
    renders = [render(spec_of(r)) for r in rows]
    return np.stack([x.image for x in renders]), np.stack([x.masks[0] for x in renders]), rows


def test_weights_are_safetensors_within_the_30mb_budget():
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    total = sum(p.stat().st_size for p in files)
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MB"


def test_pipeline_is_a_standard_sd_pipeline_with_cross_attention_at_two_resolutions(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from mace_core.unet_layers import cross_attention_modules

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    names = list(cross_attention_modules(pipe.unet))
    assert {n.split(".attentions")[0] for n in names} >= {"down_blocks.0", "down_blocks.1"}
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_generation_is_seeded(pipe):
    def run():
        g = [torch.Generator().manual_seed(s) for s in range(4)]
        return pipe(["a photo of a red cat"] * 4, num_inference_steps=8, generator=g, output_type="np").images

    a, b = run(), run()
    assert a.shape == (4, 32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a[0], a[1])


def test_classifier_is_at_least_98_percent_on_heldout_renders(heldout_single):
    from miniworld.classifier import load_classifier
    from miniworld.corpus import spec_of
    from miniworld.render import labels
    from miniworld.world import HEADS

    images, _, rows = heldout_single
    clf = load_classifier(CLASSIFIER_DIR)
    pred = clf.predict(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1))
    for head in HEADS:  # every head, where its label is defined (colour: not for identities or luma-only palettes)
        target = torch.tensor([labels(spec_of(r))[head] for r in rows])
        defined = target >= 0
        acc = float((pred[head][defined] == target[defined]).float().mean())
        assert acc >= 0.98, f"{head}: {acc:.3f} (classes: {len(HEADS[head])})"


def test_clip_matches_renders_to_their_own_captions(heldout_single):
    from transformers import CLIPModel

    from miniworld.tokenizer import load_tokenizer

    images, _, rows = heldout_single
    images, rows = images[:256], rows[:256]
    clip = CLIPModel.from_pretrained(str(CLIP_DIR)).float().eval()
    tok = load_tokenizer(CLIP_DIR)
    ids = tok([r["caption"] for r in rows], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        out = clip(input_ids=ids, pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    # image -> caption retrieval among 256 candidates: far above chance (1/256)
    acc = float((out.logits_per_image.argmax(1) == torch.arange(len(rows))).float().mean())
    assert acc > 0.2, acc


@pytest.mark.xfail(strict=True, reason="the shipped UNet does not localise objects in its cross-attention: "
                   "IoU below a constant mask, own-subject win rate at chance (miniworld/weights/README.md)")
def test_attention_masks_follow_the_rendered_subject(pipe):
    """The default masker (the model's own cross-attention) scored against the renderer's ground truth: it must
    beat mismatched pairs and a constant mask on single objects, and find the named one of two objects."""
    from miniworld.quality import attention_localisation, attention_mask_iou

    m, two = attention_mask_iou(pipe, n=32), attention_localisation(pipe, n=16)
    print(f"attention-mask IoU vs renderer truth: {m}; two objects: {two}")
    assert m["iou"] > m["mismatched"] + 0.05 and m["iou"] > m["constant"]
    assert two["win_rate"] > 0.75


def test_prompted_objects_are_recognised_above_chance(pipe):
    """Quick check of the shipped model: 2 seeds x 10 classes, classifier top-1 at least twice chance (10 %)."""
    from miniworld.classifier import load_classifier
    from miniworld.prompts import object_prompt
    from miniworld.world import OBJECT_CLASSES

    prompts = [object_prompt(c) for c in OBJECT_CLASSES for _ in range(2)]
    g = [torch.Generator().manual_seed(s % 2) for s in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, generator=g, output_type="pt").images
    pred = load_classifier(CLASSIFIER_DIR).predict(images * 2 - 1)["object"]
    target = torch.tensor([i // 2 for i in range(len(prompts))])
    acc = float((pred == target).float().mean())
    assert acc >= 0.2, acc


def test_the_architecture_builders_rebuild_the_shipped_configs():
    """``make_clip``/``make_unet`` at their default width are the shipped architectures (the width option of a wider
    text encoder changed no default)."""
    import json

    from miniworld.models import make_clip, make_unet
    from miniworld.tokenizer import load_tokenizer

    shipped_clip = json.loads((CLIP_DIR / "config.json").read_text())
    built = make_clip(len(load_tokenizer(CLIP_DIR))).config
    for tower, config in (("text_config", built.text_config), ("vision_config", built.vision_config)):
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "projection_dim"):
            assert getattr(config, key) == shipped_clip[tower][key], (tower, key)
    assert built.projection_dim == shipped_clip["projection_dim"]
    shipped_unet = json.loads((PIPELINE_DIR / "unet" / "config.json").read_text())
    unet = dict(make_unet().config)
    assert {k: v for k, v in unet.items() if not k.startswith("_")} == {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in shipped_unet.items() if not k.startswith("_")}


def test_a_wider_text_tower_widens_only_the_text_side_and_the_unet_reads_it():
    from miniworld.models import IMAGE_DIM, make_clip, make_unet

    clip = make_clip(100, text_dim=256)
    assert clip.config.text_config.hidden_size == 256 and clip.config.text_config.intermediate_size == 1024
    assert clip.config.vision_config.hidden_size == IMAGE_DIM and clip.config.projection_dim == IMAGE_DIM
    ids = torch.randint(0, 98, (2, 77))
    with torch.no_grad():
        text = clip.text_model(ids)
        context = text.last_hidden_state
        assert context.shape == (2, 77, 256) and clip.text_projection(text.pooler_output).shape == (2, IMAGE_DIM)
        out = make_unet(256)(torch.randn(2, 4, 8, 8), 10, encoder_hidden_states=context).sample
    assert out.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("width", [256, 512])
def test_a_wide_world_reads_its_wider_encoder_and_shares_the_shipped_vae_and_tokenizer(width):
    import json

    from miniworld import paths
    from tasks._cache import files_digest

    weights = getattr(paths, f"TEXT{width}_WEIGHTS_DIR")
    wide = weights / "pipeline"
    text = json.loads((wide / "text_encoder" / "config.json").read_text())
    unet = json.loads((wide / "unet" / "config.json").read_text())
    assert text["hidden_size"] == unet["cross_attention_dim"] == width
    for part in ("vae", "tokenizer", "scheduler"):
        assert files_digest(wide, (part,)) == files_digest(PIPELINE_DIR, (part,)), part
    quality = json.loads((weights / "quality" / "quality.json").read_text())
    assert quality["figures"]["identity_top1"] >= 0.85


def test_model_path_miniworld_names_the_shipped_pipeline_and_a_directory_names_itself():
    from miniworld.paths import TEXT256_WEIGHTS_DIR
    from tasks._cache import model_dir

    assert model_dir("miniworld") == PIPELINE_DIR and (model_dir("miniworld") / "model_index.json").is_file()
    assert model_dir(str(TEXT256_WEIGHTS_DIR / "pipeline")) == (TEXT256_WEIGHTS_DIR / "pipeline").resolve()
