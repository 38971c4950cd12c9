"""Architectures of the miniworld models (configs only; training lives in train_*.py)."""

from __future__ import annotations

from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

TEXT_DIM = 128  # default width of the text tower = the cross-attention context width d
IMAGE_DIM = 128  # width of CLIP's vision tower and of its joint embedding space


def make_vae() -> AutoencoderKL:
    """32x32x3 <-> 8x8x4 autoencoder (two downsamplings)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def make_clip(vocab_size: int, text_dim: int = TEXT_DIM) -> CLIPModel:
    """Tiny CLIP: 4-layer text (width `text_dim`) and vision (width `IMAGE_DIM`) transformers, 4x4 patches.

    Only the text tower's width reaches the UNet (as its cross-attention width), so a wider text encoder leaves
    the vision tower and the joint embedding as they are.
    """
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=text_dim,
        intermediate_size=4 * text_dim,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=IMAGE_DIM,
    )
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=4,
        hidden_size=IMAGE_DIM,
        intermediate_size=4 * IMAGE_DIM,
        num_hidden_layers=4,
        num_attention_heads=4,
        projection_dim=IMAGE_DIM,
    )
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=IMAGE_DIM))


def make_unet(cross_attention_dim: int = TEXT_DIM) -> UNet2DConditionModel:
    """UNet on 8x8x4 latents, channels 64/128, cross-attention (reading contexts of width
    `cross_attention_dim`, the text encoder's) in every block (8x8 and 4x4)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def make_scheduler() -> DPMSolverMultistepScheduler:
    """DPM-Solver++ with Stable Diffusion's training noise schedule."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )
