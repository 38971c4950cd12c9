"""The text-encoder sharpening fine-tune: its targets, features and the shipped encoder's separation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import CLIPTextModel

from miniworld.paths import PIPELINE_DIR
from miniworld.sharpen_text import (
    SUBJECT_NAMES,
    class_word_similarity,
    context_drift,
    max_confusion,
    subject_features,
    subject_labels,
    tail_features,
    tail_mask,
)
from miniworld.tokenizer import load_tokenizer
from miniworld.world import IDENTITIES, OBJECT_CLASSES


def _row(subjects: list) -> dict:
    return {"subjects": json.dumps(subjects), "scene": "meadow", "style": None, "seed": 0}


def test_subject_labels_index_classes_then_identities():
    rows = [_row([["object", "horse", "red"]]), _row([["identity", IDENTITIES[7], None], ["object", "cat", "blue"]])]
    labels = subject_labels(rows)
    assert labels.tolist() == [
        [OBJECT_CLASSES.index("horse"), -100],
        [len(OBJECT_CLASSES) + 7, OBJECT_CLASSES.index("cat")],
    ]
    assert SUBJECT_NAMES[labels[1, 0]] == IDENTITIES[7]


def test_subject_features_average_each_subjects_tokens():
    hidden = torch.randn(2, 6, 4)
    tokens = torch.zeros(2, 2, 6, dtype=torch.bool)
    tokens[0, 0, 2:4] = True  # a two-token name
    tokens[1, 0, 5] = True
    tokens[1, 1, 1] = True
    feats, named = subject_features(hidden, tokens)
    assert named.tolist() == [[True, False], [True, True]]
    torch.testing.assert_close(feats[0, 0], hidden[0, 2:4].mean(0))
    torch.testing.assert_close(feats[1, 0], hidden[1, 5])
    torch.testing.assert_close(feats[1, 1], hidden[1, 1])


def test_tail_mask_marks_the_first_eos_and_everything_after_it():
    eos = 9
    ids = torch.tensor([[0, 5, 6, eos, eos, eos], [0, 5, 6, 7, 8, eos]])
    assert tail_mask(ids, eos).tolist() == [[False, False, False, True, True, True],
                                           [False, False, False, False, False, True]]


def test_tail_features_average_the_tail_positions():
    hidden = torch.randn(2, 5, 3)
    tail = torch.tensor([[False, False, True, True, True], [False] * 5])
    feats = tail_features(hidden, tail)
    torch.testing.assert_close(feats[0], hidden[0, 2:].mean(0))
    torch.testing.assert_close(feats[1], torch.zeros(3))  # no tail: zero, not NaN


def test_max_confusion_ignores_the_diagonal():
    sim = torch.tensor([[1.0, 0.3, 0.9], [0.3, 1.0, -0.2], [0.9, -0.2, 1.0]])
    assert max_confusion(sim) == pytest.approx(0.9)


@pytest.fixture(scope="module")
def shipped():
    encoder = CLIPTextModel.from_pretrained(str(PIPELINE_DIR / "text_encoder")).eval()
    return encoder, load_tokenizer(PIPELINE_DIR / "tokenizer")


def test_context_drift_is_zero_for_the_same_encoder_and_grows_with_a_change(shipped):
    encoder, tokenizer = shipped
    ids = tokenizer(["a photo of a cat", "a portrait of " + IDENTITIES[0]], padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    assert context_drift(encoder, encoder, ids) == 0.0
    moved = copy.deepcopy(encoder)
    with torch.no_grad():
        moved.get_input_embeddings().weight.mul_(1.5)
    assert context_drift(moved, encoder, ids) > 0.0


def test_shipped_encoder_tells_the_object_classes_apart(shipped):
    """Before sharpening, "cat", "dog" and "horse" agreed to a cosine of 0.998 and the UNet drew one
    animal for all three prompts."""
    similarity = class_word_similarity(*shipped)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(len(OBJECT_CLASSES)))
    assert max_confusion(similarity) < 0.9
