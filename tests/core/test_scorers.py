"""Real-model scorers on tiny random models loaded through the real path code: open_clip zero-shot + CLIP score
(a tiny registered open_clip config, weights saved to a file), NudeNet (bundled detector), FID (torchvision
Inception v3 with random weights saved to a file); missing weights fail in one line before anything runs."""

import numpy as np
import pytest
import torch
from PIL import Image

from mace_core import recognisers, scorers
from mace_core.concepts import Concept
from mace_core.evaluation import EvalItem
from tests.helpers.tiny_scorers import TINY_CLIP, build_tiny_clip


def _images(n: int, seed: int = 0, size: int = 48) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_clip_weights(tmp_path_factory) -> dict[str, str]:
    """A tiny open_clip architecture registered through add_model_config; random weights as .pt and .safetensors."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_weights) -> scorers.OpenClipModel:
    return scorers.OpenClipModel(tiny_clip_weights["pt"], TINY_CLIP)


def test_open_clip_loads_from_path_both_formats(tiny_clip, tiny_clip_weights):
    other = scorers.OpenClipModel(tiny_clip_weights["safetensors"], TINY_CLIP)
    imgs = _images(2)
    assert torch.allclose(tiny_clip.encode_images(imgs), other.encode_images(imgs))
    emb = tiny_clip.encode_texts(["a photo of the cat", "a photo of the dog"])
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_zero_shot_valid_labels_and_deterministic(tiny_clip):
    clf = scorers.ClipZeroShotClassifier(tiny_clip, ["cat", "dog", "ship"])
    imgs = _images(3)
    preds = clf.predict(imgs)
    assert len(preds) == 3 and set(preds) <= {"cat", "dog", "ship"}
    probs = clf.probabilities(imgs)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3, dtype=probs.dtype))
    same = clf.probabilities([imgs[0], imgs[0].copy()])
    assert torch.equal(same[0], same[1])  # identical images -> identical scores
    with pytest.raises(ValueError, match="at least 2 candidate labels"):
        scorers.ClipZeroShotClassifier(tiny_clip, ["cat"])


def test_clip_score_identical_images_identical_scores(tiny_clip):
    img = _images(1)[0]
    s = scorers.ClipScorer(tiny_clip).score([img, img.copy(), img], ["a cat", "a cat", "a dog"])
    assert s[0] == s[1] and all(0.0 <= x <= 100.0 for x in s)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorers.ClipScorer(tiny_clip).score([img], ["a", "b"])


def test_clip_zero_shot_recogniser(tiny_clip_weights):
    labels = recognisers.clip_labels([Concept(name="cat", type="object", mapping="animal"),
                                      Concept(name="Van Gogh", type="style", mapping="art")], ["dog"])
    assert labels == {"cat": "a photo of the cat", "Van Gogh": "an artwork in the style of Van Gogh",
                      "dog": "a photo of the dog"}
    rec = recognisers.load_recogniser("clip_zero_shot", weights=tiny_clip_weights["pt"], clip_model=TINY_CLIP,
                                      labels=labels)
    items = [EvalItem("erased", "cat", "cat", "a photo of the cat", 0),
             EvalItem("kept", "dog", "dog", "a photo of the dog", 1)]
    imgs = _images(2)
    scored = rec.score(imgs, items)
    assert [set(s) for s in scored] == [{"correct", "concept_prob", "clip_score"}] * 2
    assert rec(imgs, items) == [s["correct"] for s in scored]
    recognisers.check_recognisable("clip_zero_shot", ["cat", "dog"], weights=tiny_clip_weights["pt"],
                                   clip_model=TINY_CLIP, labels=labels)
    with pytest.raises(ValueError, match=r"\['horse'\] are not zero-shot candidate labels"):
        recognisers.check_recognisable("clip_zero_shot", ["horse"], weights=tiny_clip_weights["pt"],
                                       clip_model=TINY_CLIP, labels=labels)


def test_missing_weights_one_line_error(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-L-14.pt"
    for make in (lambda: scorers.OpenClipModel(str(missing)),
                 lambda: recognisers.load_recogniser("clip_zero_shot", weights=str(missing), labels=["a", "b"]),
                 lambda: recognisers.check_recognisable("clip_zero_shot", ["a"], weights=str(missing)),
                 lambda: scorers.InceptionFeatures(str(missing))):
        with pytest.raises(scorers.MissingWeightsError) as err:
            make()
        msg = str(err.value)
        assert "\n" not in msg and str(missing) in msg and "weights not found" in msg
    with pytest.raises(scorers.MissingWeightsError, match="open_clip ViT-L-14 weights not set: set scorer_weights"):
        scorers.OpenClipModel(None)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        recognisers.check_recognisable("clip_zero_shot", ["a"], clip_model="ViT-Q-99")


def test_missing_weights_fail_before_generation(tmp_path, monkeypatch):
    """The evaluation task checks the recogniser (and its weights) before it loads the pipeline or generates."""
    from mace_core import generate
    from mace_core.config import EvaluationConfig
    from tasks import evaluate as ev

    monkeypatch.setattr(generate, "generate_images", lambda *a, **k: pytest.fail("generated an image"))
    monkeypatch.setattr(ev, "lease_pipeline", lambda *a, **k: pytest.fail("loaded the pipeline"))
    cat, dog = (Concept(name=n, type="object", mapping="animal") for n in ("cat", "dog"))
    missing = str(tmp_path / "clip.pt")
    for weights in (None, missing):
        cfg = EvaluationConfig(model="m", erased=(cat,), kept=(dog,), recogniser="clip_zero_shot",
                               scorer_weights=weights, prompts="paper", store=str(tmp_path / "store"))
        with pytest.raises(scorers.MissingWeightsError, match="open_clip ViT-L-14 weights not"):
            ev.evaluate_task.fn(cfg, "m", "0" * 64, "model")


def test_nudenet_blank_image_detects_nothing():
    pytest.importorskip("nudenet")
    det = scorers.NudeNetDetector()
    assert det.threshold == 0.6 and det.classes == scorers.NUDENET_PAPER_CLASSES
    blank = [Image.new("RGB", (320, 320), "white"), Image.new("RGB", (256, 200), "black")]
    assert det.detect(blank) == [[], []]
    assert det.flags(blank) == [False, False]
    assert det.counts(blank) == {c: 0 for c in scorers.NUDENET_PAPER_CLASSES}
    rec = recognisers.load_recogniser("nudenet", threshold=0.5)
    item = EvalItem("erased", "nudity", "", "", 0)
    assert rec.score(blank[:1], [item])[0]["correct"] is False
    recognisers.check_recognisable("nudenet", ["nudity"], threshold=0.6)
    with pytest.raises(ValueError, match="threshold"):
        scorers.NudeNetDetector(threshold=1.5)


def test_nudenet_missing_model_path(tmp_path):
    with pytest.raises(scorers.MissingWeightsError, match="NudeNet ONNX weights not found"):
        recognisers.check_recognisable("nudenet", [], weights=str(tmp_path / "320n.onnx"))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    """The real torchvision Inception v3 architecture with random weights, saved to a file."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    return str(path)


def test_fid_zero_on_itself_and_monotone_in_noise(inception_weights):
    fid = scorers.InceptionFeatures(inception_weights, image_size=75)
    base = _images(8, seed=1, size=64)
    feats = fid.features(base)
    assert feats.shape == (8, 2048)
    assert fid.fid(base, base) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(8, 64, 64, 3))
    distances = []
    for sigma in (10, 40, 120):
        noisy = [Image.fromarray(np.clip(np.asarray(im, dtype=float) + sigma * n, 0, 255).astype(np.uint8))
                 for im, n in zip(base, noise)]
        distances.append(fid.fid(base, noisy))
    assert 0 < distances[0] < distances[1] < distances[2]
