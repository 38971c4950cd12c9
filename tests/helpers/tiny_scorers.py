"""Tiny random open_clip model for scorer tests: a registered architecture config and its weights in a file, so
tests go through the real ``create_model_and_transforms(name, pretrained=<path>)`` loading code."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP = "mace-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(root: Path) -> None:
    """Register ``TINY_CLIP`` with open_clip (``add_model_config`` on a folder holding its JSON config)."""
    import open_clip

    if open_clip.get_model_config(TINY_CLIP) is not None:
        return
    folder = Path(root) / "open_clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(folder)


def build_tiny_clip(root: Path, seed: int = 0) -> dict[str, str]:
    """Random ``TINY_CLIP`` weights saved as ``tiny.pt`` and ``tiny.safetensors`` under ``root``."""
    import open_clip
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    register_tiny_clip(root)
    torch.manual_seed(seed)
    state = open_clip.create_model(TINY_CLIP).state_dict()
    torch.save(state, root / "tiny.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "tiny.safetensors"))
    return {"pt": str(root / "tiny.pt"), "safetensors": str(root / "tiny.safetensors")}
