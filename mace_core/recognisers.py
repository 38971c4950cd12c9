"""Recognisers for the erasure protocol: given images and the items they were prompted with, say whether
each image shows its prompted concept (``mace_core.evaluation.Recogniser``).

- ``miniworld``: the shipped multi-head classifier (object / identity / style heads), the analogue of the
  paper's CIFAR-10 classifier and celebrity detector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from mace_core.evaluation import EvalItem

RECOGNISERS: tuple[str, ...] = ("miniworld",)


def concept_head(labels: dict[str, list[str]], concept: str) -> tuple[str, int]:
    """(head, class index) of the classifier label equal to ``concept`` (case-insensitive)."""
    wanted = concept.casefold()
    for head in ("object", "identity", "style"):
        names = [n.casefold() for n in labels.get(head, [])]
        if wanted in names:
            return head, names.index(wanted)
    raise ValueError(
        f"concept {concept!r} is not a label of the miniworld classifier: erase a miniworld object, identity or style"
    )


def miniworld_recogniser(device: str = "cpu") -> Callable[[list[Image.Image], Sequence[EvalItem]], list[bool]]:
    """Top-1 of the concept's head equals the concept (one classifier load per call of this factory)."""
    from miniworld.classifier import load_classifier

    classifier = load_classifier(device=device)

    def recognise(images: list[Image.Image], items: Sequence[EvalItem]) -> list[bool]:
        heads = [concept_head(classifier.labels, it.concept) for it in items]
        predictions = classifier.predict(images)
        return [bool(predictions[h][i] == idx) for i, (h, idx) in enumerate(heads)]

    return recognise


def load_recogniser(name: str, device: str = "cpu") -> Callable[[list[Image.Image], Sequence[EvalItem]], list[bool]]:
    """Recogniser by name (one of ``RECOGNISERS``)."""
    if name == "miniworld":
        return miniworld_recogniser(device)
    raise ValueError(f"unknown recogniser {name!r}: use one of {', '.join(RECOGNISERS)}")


def check_recognisable(name: str, concepts: Sequence[str]) -> None:
    """Fail before any generation when a concept has no label in the recogniser."""
    if name == "miniworld":
        from miniworld.classifier import load_classifier

        labels = load_classifier().labels
        for c in concepts:
            concept_head(labels, c)
    elif name not in RECOGNISERS:
        raise ValueError(f"unknown recogniser {name!r}: use one of {', '.join(RECOGNISERS)}")


@torch.no_grad()
def miniworld_features(images: list[Image.Image], device: str = "cpu") -> torch.Tensor:
    """Classifier penultimate features [N, F] for Fréchet distances."""
    from miniworld.classifier import load_classifier

    return load_classifier(device=device).features(images)
