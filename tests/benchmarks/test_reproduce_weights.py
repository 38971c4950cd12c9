"""``benchmarks.reproduce_weights``: which files are compared, and how a difference is reported."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.reproduce_weights import WEIGHTS, compare_losses, compare_quality, compare_weights, weight_files


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
    assert compare_quality(shipped, chain) == {
        "object_top1": {"shipped": 0.9, "chain": 0.9, "equal": True, "target": 0.9, "chain_meets_target": True}}


def test_a_file_the_chain_did_not_write_is_reported_missing(tmp_path):
    shipped = _tree(tmp_path / "a", torch.zeros(2), "", {"object_top1": 1.0})
    chain = _tree(tmp_path / "b", torch.zeros(2), "", {"object_top1": 0.5})
    (chain / WEIGHTS / "unet" / "config.json").unlink()
    rows = {r["file"]: r for r in compare_weights(shipped, chain)}
    assert rows["unet/model.safetensors"]["identical"]
    assert not rows["unet/config.json"]["identical"] and "missing" in rows["unet/config.json"]["note"]
    assert compare_quality(shipped, chain)["object_top1"]["equal"] is False
    assert compare_quality(shipped, chain)["object_top1"]["chain_meets_target"] is False


def test_loss_curves_report_the_first_step_that_differs_and_each_final_value(tmp_path):
    shipped, chain = tmp_path / "a", tmp_path / "b"
    (shipped / WEIGHTS / "logs").mkdir(parents=True)
    (shipped / WEIGHTS / "logs" / "vae_loss.csv").write_text("step,seconds,loss,kl\n100,5.0,0.5,1\n200,9.0,0.4,1\n")
    (shipped / WEIGHTS / "logs" / "clip_loss.csv").write_text("step,seconds,loss\n100,5.0,7.0\n")
    for model, text in (("vae", "step,seconds,loss,kl\n100,2.0,0.5,1\n200,4.0,0.41,1\n300,6.0,0.3,1\n"),
                        ("clip", "step,seconds,loss\n100,1.0,7.0\n")):
        (chain / "miniworld" / "_train" / model).mkdir(parents=True)
        (chain / "miniworld" / "_train" / model / "loss.csv").write_text(text)
    losses = compare_losses(shipped, chain)
    assert set(losses) == {"vae", "clip"}  # models with no curve on either side are left out
    assert losses["vae"] == {"column": "loss", "steps_compared": 2, "first_differing_step": "200", "last_step": "200",
                             "shipped_last": 0.4, "chain_last": 0.41}  # the clock differs everywhere: not compared
    assert losses["clip"]["first_differing_step"] is None
