"""Tiny seeded random-weight SD1 / SD2 / SDXL-shaped pipelines, saved once per session and reloaded.

Each family keeps the structural traits MACE must handle (DESIGN.md "Models"):

- ``sd1``: ``CLIPTextModel``, pad token = EOS, context width 32, one ``attention_head_dim`` int;
- ``sd2``: pad token ``"!"``, a different context width (48), ``attention_head_dim`` list, linear
  projections in the transformer blocks, upcast attention;
- ``sdxl``: two text encoders (``text_encoder_2`` = ``CLIPTextModelWithProjection``, pad ``"!"``),
  concatenated context 32 + 32 = 64, ``addition_embed_type="text_time"``, two transformer layers per block.

Every pipeline is written with ``save_pretrained`` and read back through ``mace_core.models.load_pipeline``,
so the tests exercise the real loading path. Nothing touches the Hub.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.tokenizers import clip_tokenizer

FAMILIES = ("sd1", "sd2", "sdxl")
VOCAB = 49408  # the real CLIP BPE vocabulary (tests.helpers.tokenizers)


def _text_config(hidden: int, act: str = "quick_gelu", projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    kwargs = dict(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=act, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=1,
    )
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    return CLIPTextConfig(**kwargs)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_tiny_pipeline(family: str, seed: int = 0):
    """A fresh random-weight pipeline of ``family`` (``"sd1"`` | ``"sd2"`` | ``"sdxl"``), seeded."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    common = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8)
    if family == "sd1":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), **common,
        )
        return StableDiffusionPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(32)), tokenizer=clip_tokenizer("<|endoftext|>"),
            unet=unet, scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sd2":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), cross_attention_dim=48, attention_head_dim=(2, 4),
            use_linear_projection=True, upcast_attention=True,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **common,
        )
        return StableDiffusionPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(48, act="gelu")), tokenizer=clip_tokenizer("!"),
            unet=unet, scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), cross_attention_dim=64, attention_head_dim=(2, 4),
            use_linear_projection=True, transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **common,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(32, act="gelu")),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(32, act="gelu", projection_dim=32)),
            tokenizer=clip_tokenizer("<|endoftext|>"), tokenizer_2=clip_tokenizer("!"),
            unet=unet, scheduler=_scheduler(), force_zeros_for_empty_prompt=True,
        )
    raise ValueError(f"unknown family {family!r}: use one of {FAMILIES}")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """family -> directory of the saved tiny pipeline (built and saved once per session)."""
    root = tmp_path_factory.mktemp("tiny_sd")
    dirs = {}
    for family in FAMILIES:
        path = root / family
        build_tiny_pipeline(family).save_pretrained(path, safe_serialization=True)
        dirs[family] = str(path)
    return dirs


@pytest.fixture(scope="session")
def tiny_pipes(tiny_dirs) -> dict:
    """family -> pipeline loaded with ``load_pipeline`` (fp32, CPU). Treat as read-only."""
    from mace_core.models import load_pipeline

    return {family: load_pipeline(path) for family, path in tiny_dirs.items()}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
