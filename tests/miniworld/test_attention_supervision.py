"""The optional cross-attention supervision loss of the miniworld UNet."""

from __future__ import annotations

import pytest
import torch

from miniworld.attention_supervision import (
    corpus_attention_targets,
    subject_attention_loss,
    subject_token_masks,
)
from miniworld.paths import PIPELINE_DIR
from miniworld.render import Subject
from miniworld.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(PIPELINE_DIR / "tokenizer")


def _words(tokenizer, caption: str, mask: torch.Tensor) -> str:
    ids = tokenizer(caption, padding="max_length", max_length=77).input_ids
    return tokenizer.decode([i for i, m in zip(ids, mask.tolist()) if m]).strip()


def test_token_masks_mark_the_words_naming_each_subject(tokenizer):
    caption = "a red pooch next to a blue kitty under the night sky"
    masks = subject_token_masks(tokenizer, caption, (Subject("object", "dog", "red"), Subject("object", "cat", "blue")))
    assert _words(tokenizer, caption, masks[0]) == "pooch"
    assert _words(tokenizer, caption, masks[1]) == "kitty"
    name = "the emblem of Brennic Ambrose"
    masks = subject_token_masks(tokenizer, name, (Subject("identity", "Brennic Ambrose", None),))
    assert _words(tokenizer, name, masks[0]).lower() == "brennic ambrose" and not masks[1].any()


def test_two_subjects_of_one_class_get_no_tokens(tokenizer):
    caption = "a red dog next to a blue dog"
    masks = subject_token_masks(tokenizer, caption, (Subject("object", "dog", "red"), Subject("object", "dog", "blue")))
    assert not masks.any()


def test_corpus_targets_hold_area_resized_masks(tokenizer):
    rows = [{"caption": "a red pooch next to a blue kitty", "seed": 5, "scene": "meadow", "style": None,
             "subjects": '[["object", "dog", "red"], ["object", "cat", "blue"]]'},
            {"caption": "Fargo Dunmore", "seed": 2, "scene": "snowfield", "style": None,
             "subjects": '[["identity", "Fargo Dunmore", null]]'}]
    t = corpus_attention_targets(rows, tokenizer)
    assert t["tokens"].shape == (2, 2, 77) and t["masks"].shape == (2, 2, 8, 8)
    assert t["tokens"][0].any(-1).all() and t["tokens"][1, 0].any() and not t["tokens"][1, 1].any()
    m = t["masks"].float()
    assert (m >= 0).all() and (m <= 1).all() and m[0, 0].sum() > 0 and m[0, 1].sum() > 0 and m[1, 1].sum() == 0


def _probs_on(pixels: torch.Tensor, token: int, heads: int = 2) -> torch.Tensor:
    """probs[1, heads, 16, 4]: pixel p attends to ``token`` where pixels[p], else to token 0."""
    probs = torch.zeros(1, heads, 16, 4)
    probs[0, :, pixels, token] = 1.0
    probs[0, :, ~pixels, 0] = 1.0
    return probs


def test_loss_is_zero_inside_one_outside_and_ignores_rows_without_words():
    mask = torch.zeros(4, 4)
    mask[1:3, 1:3] = 1
    inside = mask.flatten().bool()
    tokens = torch.zeros(1, 2, 4, dtype=torch.bool)
    tokens[0, 0, 2] = True  # subject 0 is named by token 2; subject 1 by nothing
    masks = torch.stack([mask, torch.ones(4, 4)])[None]
    assert subject_attention_loss({"a": _probs_on(inside, 2)}, tokens, masks).item() == pytest.approx(0.0)
    assert subject_attention_loss({"a": _probs_on(~inside, 2)}, tokens, masks).item() == pytest.approx(1.0)
    uniform = torch.full((1, 2, 16, 4), 0.25)
    assert subject_attention_loss({"a": uniform}, tokens, masks).item() == pytest.approx(1 - 4 / 16)
    assert subject_attention_loss({"a": uniform}, torch.zeros_like(tokens), masks).item() == 0.0


def test_training_on_the_loss_moves_attention_onto_the_subject():
    from diffusers import UNet2DConditionModel

    from mace_core.attention_loss import AttentionCapture

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=16,
                                attention_head_dim=8, norm_num_groups=8)
    x, t, context = torch.randn(4, 4, 8, 8), torch.full((4,), 500), torch.randn(4, 6, 16)
    tokens = torch.zeros(4, 2, 6, dtype=torch.bool)
    tokens[:, 0, 2] = True
    masks = torch.zeros(4, 2, 8, 8)
    masks[:, 0, :4, :4] = 1  # the subject is the top-left quarter
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        with AttentionCapture(unet) as capture:
            unet(x, t, context)
        loss = subject_attention_loss(capture.probs, tokens, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.6  # about 1 - 1/4 at the start: attention spread evenly
    assert losses[-1] < 0.5 * losses[0]
