"""``benchmarks.reproduce_weights``: which files are compared, and how a difference is reported."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.reproduce_weights import WEIGHTS, compare_quality, compare_weights, weight_files


def _tree(root: Path, tensor: torch.Tensor, readme: str, figures: dict) -> Path:
    w = root / WEIGHTS
    for d in ("unet", "logs", "quality"):
        (w / d).mkdir(parents=True)
    save_file({"w": tensor}, w / "unet" / "model.safetensors")
    (w / "unet" / "config.json").write_text('{"a": 1}')
    (w / "README.md").write_text(readme)
    (w / "logs" / "unet_loss.csv").write_text(readme)
    (w / "quality" / "quality.json").write_text(json.dumps({"figures": figures}))
    return root


def test_only_trained_files_are_compared_and_a_changed_tensor_reports_its_largest_difference(tmp_path):
    figures = {"object_top1": 0.9, "seconds_for_8_images": 2.0}
    shipped = _tree(tmp_path / "a", torch.zeros(3), "card A", figures)
    chain = _tree(tmp_path / "b", torch.tensor([0.0, 0.25, -0.5]), "card B", figures | {"seconds_for_8_images": 1.0})
    assert weight_files(shipped) == ["unet/config.json", "unet/model.safetensors"]  # card, logs, quality: measured
    rows = {r["file"]: r for r in compare_weights(shipped, chain)}
    assert rows["unet/config.json"]["identical"] and "max_abs_difference" not in rows["unet/config.json"]
    assert not rows["unet/model.safetensors"]["identical"]
    assert rows["unet/model.safetensors"]["max_abs_difference"] == 0.5
    assert compare_quality(shipped, chain) == {"object_top1": {"shipped": 0.9, "chain": 0.9, "equal": True}}


def test_a_file_the_chain_did_not_write_is_reported_missing(tmp_path):
    shipped = _tree(tmp_path / "a", torch.zeros(2), "", {"object_top1": 1.0})
    chain = _tree(tmp_path / "b", torch.zeros(2), "", {"object_top1": 0.5})
    (chain / WEIGHTS / "unet" / "config.json").unlink()
    rows = {r["file"]: r for r in compare_weights(shipped, chain)}
    assert rows["unet/model.safetensors"]["identical"]
    assert not rows["unet/config.json"]["identical"] and "missing" in rows["unet/config.json"]["note"]
    assert compare_quality(shipped, chain)["object_top1"]["equal"] is False
