"""The miniworld evaluation classifier: a small multi-head CNN trained on renderer ground truth.

It is the analogue of the paper's CIFAR-10 classifier and celebrity detector; its 256-d
penultimate features give a Fréchet (FID-like) distance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from miniworld.paths import CLASSIFIER_DIR
from miniworld.world import HEADS

FEATURES = 256


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MiniworldClassifier(nn.Module):
    """CNN 32x32 -> 256 features -> one linear head per entry of ``labels``."""

    def __init__(self, labels: dict[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        self.labels: dict[str, list[str]] = {h: list(v) for h, v in (labels or HEADS).items()}
        self.backbone = nn.Sequential(
            _block(3, 64), nn.MaxPool2d(2),  # 16x16
            _block(64, 128), nn.MaxPool2d(2),  # 8x8
            _block(128, FEATURES), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({h: nn.Linear(FEATURES, len(v)) for h, v in self.labels.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """float[B, 3, 32, 32] in [-1, 1] -> logits per head."""
        f = self.backbone(x)
        return {h: head(f) for h, head in self.heads.items()}

    def _batch(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (resized to 32x32 if needed) or float[B, 3, H, W] in [-1, 1] -> model input."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images: expected float[B, 3, 32, 32] in [-1, 1], got shape {tuple(images.shape)}")
            x = images.float()
        else:
            arrays = [np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)) for im in images]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.to(next(self.parameters()).device)

    @torch.no_grad()
    def predict(self, images: torch.Tensor | Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Top-1 class index per head: LongTensor[N] each (names in ``self.labels[head]``)."""
        return {h: logits.argmax(1).cpu() for h, logits in self(self._batch(images)).items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        """Penultimate features float[N, 256] (for Fréchet distances)."""
        return self.backbone(self._batch(images)).cpu()

    def save(self, directory: Path) -> None:
        """Write ``model.safetensors`` (float16) and ``labels.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()
                 for k, v in self.state_dict().items()}
        save_file(state, directory / "model.safetensors")
        (directory / "labels.json").write_text(json.dumps(self.labels, indent=0))


def load_classifier(path: Path | str | None = None, device: str = "cpu") -> MiniworldClassifier:
    """Load the shipped classifier (or one saved at ``path``) in eval mode, float32."""
    directory = Path(path) if path is not None else CLASSIFIER_DIR
    model = MiniworldClassifier(json.loads((directory / "labels.json").read_text()))
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(directory / "model.safetensors").items()}
    model.load_state_dict(state)
    return model.to(device).eval()

