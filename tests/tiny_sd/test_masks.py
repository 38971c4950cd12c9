"""Attention masker on tiny random pipelines: shapes, determinism, dependence on the concept tokens."""

import pytest
import torch

from mace_core.masks import attention_masks, attention_saliency, mask_iou


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_masks_are_binary_and_reproducible(tiny_pipes, family):
    pipe = tiny_pipes[family]
    imgs = _images()
    prompts, targets = ["a photo of a cat", "a photo of a red truck"], ["cat", "red truck"]
    m1 = attention_masks(pipe, imgs, prompts, targets, torch.Generator().manual_seed(1))
    m2 = attention_masks(pipe, imgs, prompts, targets, torch.Generator().manual_seed(1))
    assert m1.shape == (2, 1, 32, 32)
    assert set(m1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m1, m2)
    assert (m1.flatten(1).sum(1) > 0).all()  # the peak always passes a relative threshold


def test_saliency_depends_on_concept_tokens(tiny_pipes):
    pipe = tiny_pipes["sd1"]
    imgs = _images(1)
    a = attention_saliency(pipe, imgs, ["a cat next to a truck"], ["cat"], torch.Generator().manual_seed(0))
    b = attention_saliency(pipe, imgs, ["a cat next to a truck"], ["truck"], torch.Generator().manual_seed(0))
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b)


def test_threshold_is_monotone(tiny_pipes):
    pipe, imgs = tiny_pipes["sd1"], _images(1)
    args = (pipe, imgs, ["a photo of a dog"], ["dog"])
    low = attention_masks(*args, torch.Generator().manual_seed(0), threshold=0.2)
    high = attention_masks(*args, torch.Generator().manual_seed(0), threshold=0.8)
    assert (high <= low).all() and low.sum() > high.sum()


def test_bad_inputs_raise(tiny_pipes):
    pipe, imgs = tiny_pipes["sd1"], _images(1)
    with pytest.raises(ValueError, match="not found"):
        attention_masks(pipe, imgs, ["a photo of a dog"], ["cat"], torch.Generator())
    with pytest.raises(ValueError, match="threshold"):
        attention_masks(pipe, imgs, ["a photo of a dog"], ["dog"], torch.Generator(), threshold=1.5)
    with pytest.raises(ValueError, match="one of each"):
        attention_masks(pipe, imgs, ["a", "b"], ["a"], torch.Generator())


def test_mask_iou():
    a, b = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    a[0, 0, :2] = 1
    b[0, 0, :1] = 1
    assert mask_iou(a, b).tolist() == [0.5, 1.0]
