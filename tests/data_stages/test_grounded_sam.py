"""Grounded-SAM masks end to end on tiny random-weight GroundingDINO (SwinT-OGC) and SAM (issue 6 item 3).

One real GroundingDINO forward per session (seconds on 2 cores); tests of the box/union/empty logic replace
``GroundedSam.detect`` with known boxes and run the real SAM predictor.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mace_core import grounded_sam as gs
from tests.data_stages._gsam_fixtures import tiny_sam, write_tiny_bert

SIZE = 256  # GroundingDINO needs >= 900 encoder tokens: 256 px is the smallest square input


@pytest.fixture(scope="module")
def dino_config() -> Path:
    import groundingdino

    return Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"


@pytest.fixture(scope="module")
def bert_dir() -> Path:
    return write_tiny_bert(Path(tempfile.mkdtemp(prefix="mace-bert-")) / "bert")


@pytest.fixture(scope="module")
def gsam(dino_config, bert_dir) -> gs.GroundedSam:
    torch.manual_seed(0)
    return gs.GroundedSam.load(dino_config, None, bert_dir, None, tiny_sam, dino_size=SIZE)


def _image(h: int = 96, w: int = 128, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def real_run(gsam):
    """One real forward of both models, recording what each model received."""
    seen: dict = {}
    detector_forward = gsam.detector.forward
    set_image, predict_torch = gsam.predictor.set_image, gsam.predictor.predict_torch

    def spy_detector(x, captions=None, **kw):
        seen["dino_x"], seen["captions"] = x.detach().clone(), captions
        out = detector_forward(x, captions=captions, **kw)
        seen["dino_out"] = {k: out[k].detach().clone() for k in ("pred_logits", "pred_boxes")}
        return out

    def spy_set_image(image, image_format="RGB"):
        seen["sam_image"], seen["sam_format"] = image.copy(), image_format
        return set_image(image, image_format)

    def spy_predict(**kw):
        seen["sam_boxes"] = kw["boxes"].clone()
        return predict_torch(**kw)

    gsam.detector.forward = spy_detector
    gsam.predictor.set_image, gsam.predictor.predict_torch = spy_set_image, spy_predict
    try:
        image = _image(96, 128)
        masks, records = gsam.masks([image], "Cat", box_threshold=0.3, text_threshold=0.25)
    finally:
        gsam.detector.forward = detector_forward
        gsam.predictor.set_image, gsam.predictor.predict_torch = set_image, predict_torch
    return image, masks, records, seen


def test_real_path_shapes_and_record(real_run):
    image, masks, records, seen = real_run
    (mask,), (rec,) = masks, records
    assert mask.shape == (96, 128) and mask.dtype == bool
    assert seen["dino_out"]["pred_logits"].shape == (1, 900, 256)
    assert rec.n_boxes == len(rec.scores) == len(rec.boxes_xyxy) == len(rec.phrases)
    assert list(rec.scores) == sorted(rec.scores, reverse=True) and all(s > 0.3 for s in rec.scores)
    probs = seen["dino_out"]["pred_logits"][0].sigmoid().max(1).values
    assert rec.n_boxes == int((probs > 0.3).sum())
    for x0, y0, x1, y1 in rec.boxes_xyxy:
        assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96
    assert rec.outcome == ("detected" if rec.n_boxes else "full")


def test_groundingdino_preprocessing(real_run):
    image, _, _, seen = real_run
    x = seen["dino_x"]
    assert seen["captions"] == ["cat ."]  # lower-cased phrase + " ."
    assert tuple(x.shape) == (1, 3, SIZE, int(SIZE * 128 / 96))  # shorter side resized, aspect kept
    # ImageNet-normalised: undoing the normalisation gives [0, 1] pixels of the resized image
    mean, std = torch.tensor(gs.IMAGENET_MEAN)[:, None, None], torch.tensor(gs.IMAGENET_STD)[:, None, None]
    pixels = x[0] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert x[0].mean().abs() < 1.0 and x.min() < -1.5  # centred, not a raw [0, 1] tensor


def test_sam_receives_uint8_rgb_and_transformed_boxes(real_run, gsam):
    image, _, records, seen = real_run
    if "sam_image" not in seen:
        pytest.skip("random detector found no box above threshold")
    assert seen["sam_image"].dtype == np.uint8 and seen["sam_format"] == "RGB"
    np.testing.assert_array_equal(seen["sam_image"], np.asarray(image))  # not the washed-out [127, 255]
    xyxy = torch.tensor(records[0].boxes_xyxy)
    expected = gsam.predictor.transform.apply_boxes_torch(xyxy, (96, 128))
    torch.testing.assert_close(seen["sam_boxes"], expected, atol=1e-2, rtol=0)


def test_dino_input_statistics_of_a_uniform_image():
    rgb = (200, 100, 50)
    x = gs.dino_input(Image.new("RGB", (300, 200), rgb), size=400, max_size=1333)
    assert tuple(x.shape) == (3, 400, 600)
    for c in range(3):
        expected = (rgb[c] / 255 - gs.IMAGENET_MEAN[c]) / gs.IMAGENET_STD[c]
        assert abs(float(x[c].mean()) - expected) < 1e-5 and float(x[c].std()) < 1e-5
    gray = gs.dino_input(Image.new("L", (256, 256), 128), size=256)
    assert gray.shape[0] == 3  # converted to RGB


@pytest.mark.parametrize("wh", [(512, 512), (1000, 500), (300, 1200), (640, 480)])
def test_resize_rule_matches_groundingdino_transform(wh):
    import groundingdino.datasets.transforms as T

    img = Image.new("RGB", wh)
    resized, _ = T.RandomResize([800], max_size=1333)(img, None)
    assert gs.dino_resized_size(*wh) == resized.size


def test_boxes_to_xyxy():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.4, 0.4]])
    xyxy = gs.boxes_to_xyxy(boxes, width=200, height=100)
    torch.testing.assert_close(xyxy, torch.tensor([[50.0, 25.0, 150.0, 75.0], [0.0, 0.0, 60.0, 30.0]]))


def _fixed_detect(boxes_cxcywh):
    def detect(image, phrase, box_threshold, text_threshold):
        b = torch.tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4)
        return b, torch.linspace(0.9, 0.5, b.shape[0]), ["cat"] * b.shape[0]

    return detect


def test_union_of_box_masks(gsam, monkeypatch):
    boxes = [[0.25, 0.3, 0.3, 0.4], [0.7, 0.6, 0.4, 0.5], [0.5, 0.5, 0.2, 0.2]]
    monkeypatch.setattr(gsam, "detect", _fixed_detect(boxes))
    image = _image(96, 128, seed=1)
    (mask,), (rec,) = gsam.masks([image], "cat")
    rgb = np.asarray(image)
    xyxy = gs.boxes_to_xyxy(torch.tensor(boxes), 128, 96)
    per_box = [gsam.segment(rgb, xyxy[i : i + 1])[0].numpy() for i in range(3)]
    np.testing.assert_array_equal(mask, per_box[0] | per_box[1] | per_box[2])
    assert rec.n_boxes == 3 and rec.outcome == "detected"


@pytest.mark.parametrize("policy,outcome", [("full", "full"), ("skip", "skipped")])
def test_nothing_detected_policy(gsam, monkeypatch, policy, outcome):
    monkeypatch.setattr(gsam, "detect", _fixed_detect([]))
    masks, records = gsam.masks([_image(), _image(seed=2)], "cat", on_empty=policy)
    assert [r.outcome for r in records] == [outcome, outcome] and records[0].n_boxes == 0
    if policy == "full":
        assert all(m.shape == (96, 128) and m.all() for m in masks)
    else:
        assert masks == [None, None]


def test_bad_arguments(gsam):
    with pytest.raises(ValueError, match="on_empty"):
        gsam.masks([_image()], "cat", on_empty="zeros")
    with pytest.raises(ValueError, match="box_threshold"):
        gsam.masks([_image()], "cat", box_threshold=1.5)
    with pytest.raises(ValueError, match="empty"):
        gsam.masks([], "cat")
    with pytest.raises(TypeError, match="PIL"):
        gsam.masks([np.zeros((4, 4, 3))], "cat")


# --- shim ---------------------------------------------------------------------------------------------


def test_bert_compat_is_idempotent_and_keeps_existing(monkeypatch):
    import inspect

    from transformers import BertModel
    from transformers.models.bert.modeling_bert import BertEmbeddings

    for name in ("get_extended_attention_mask", "invert_attention_mask", "get_head_mask"):
        monkeypatch.delattr(BertModel, name, raising=False)
    sentinel = lambda self, head_mask, n, chunked=False: "mine"  # noqa: E731
    monkeypatch.setattr(BertModel, "get_head_mask", sentinel, raising=False)
    forward = inspect.unwrap(BertEmbeddings.forward)  # this transformers' own forward
    monkeypatch.setattr(BertEmbeddings, "forward", forward)
    renamed = "cache_length" in inspect.signature(forward).parameters  # transformers >= 5.24
    assert gs.install_bert_compat() == ["get_extended_attention_mask", "invert_attention_mask"] + (
        ["BertEmbeddings.forward(past_key_values_length=)"] if renamed else [])
    assert gs.install_bert_compat() == []
    assert BertModel.get_head_mask is sentinel


def test_bert_compat_matches_plain_bert(bert_dir):
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper
    from transformers import BertModel

    gs.install_bert_compat()
    bert = BertModel.from_pretrained(bert_dir).eval()
    ids = torch.tensor([[2, 9, 5, 10, 5, 3]])
    with torch.no_grad():
        plain = bert(ids).last_hidden_state
        wrapped = BertModelWarper(bert)(ids, attention_mask=torch.ones(1, 6, 6)).last_hidden_state
        block = torch.zeros(1, 6, 6)
        block[0, :3, :3], block[0, 3:, 3:] = 1, 1
        sub = BertModelWarper(bert)(ids, attention_mask=block).last_hidden_state
    torch.testing.assert_close(wrapped, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sub, plain, atol=1e-4)  # 3-D sub-sentence masks are honoured
    ext = gs._get_extended_attention_mask(bert, torch.tensor([[1, 0]]))
    assert ext.shape == (1, 1, 1, 2) and ext[0, 0, 0, 0] == 0 and ext[0, 0, 0, 1] == torch.finfo(ext.dtype).min
    assert gs._get_head_mask(bert, None, 2) == [None, None]


# --- loading errors -------------------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path, dino_config, bert_dir):
    with pytest.raises(ValueError, match=r"GroundingDINO config '.*nope\.py' does not exist"):
        gs.GroundedSam.load(tmp_path / "nope.py", None, bert_dir, None, tiny_sam)
    with pytest.raises(ValueError, match=r"GroundingDINO checkpoint '.*w\.pth' does not exist"):
        gs.build_groundingdino(dino_config, tmp_path / "w.pth", bert_dir)
    with pytest.raises(ValueError, match="text encoder dir .* no config.json"):
        gs.build_groundingdino(dino_config, None, tmp_path)
    with pytest.raises(ValueError, match=r"SAM checkpoint '.*sam\.pth' does not exist"):
        gs.build_sam("vit_b", tmp_path / "sam.pth")
    with pytest.raises(ValueError, match="sam_model_type 'vit_x'"):
        gs.build_sam("vit_x", None)


def test_groundingdino_checkpoint_of_another_model_is_refused(tmp_path, dino_config, bert_dir):
    torch.save({"model": {"module.foo.weight": torch.zeros(2)}}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="lacks .* weights of this config"):
        gs.build_groundingdino(dino_config, tmp_path / "w.pth", bert_dir)


def test_sam_checkpoint_round_trip_and_mismatch(tmp_path):
    sam = tiny_sam()
    torch.save(sam.state_dict(), tmp_path / "tiny.pth")
    other = tiny_sam(seed=1)
    assert not torch.equal(other.mask_decoder.iou_token.weight, sam.mask_decoder.iou_token.weight)
    loaded, predictor = gs.build_sam(lambda: tiny_sam(seed=1), tmp_path / "tiny.pth")
    for (k, a), (_, b) in zip(sam.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert predictor.model is loaded
    state = sam.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not match sam_model_type"):
        gs.build_sam(tiny_sam, tmp_path / "partial.pth")


def test_sam_hq_checkpoint_is_detected(tmp_path):
    pytest.importorskip("segment_anything")
    try:
        import segment_anything_hq  # noqa: F401
        pytest.skip("segment_anything_hq installed: SAM-HQ checkpoints are supported")
    except ImportError:
        pass
    state = tiny_sam().state_dict()
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 32)
    torch.save(state, tmp_path / "sam_hq.pth")
    with pytest.raises(ValueError, match="SAM-HQ checkpoint .* pip install segment-anything-hq"):
        gs.build_sam("vit_h", tmp_path / "sam_hq.pth")


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"model": tiny_sam().state_dict(), "args": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="unsafe unpickling: if you trust the file, pass trust_checkpoints=True"):
        gs.build_sam(tiny_sam, tmp_path / "pickled.pth")
    sam, _ = gs.build_sam(tiny_sam, tmp_path / "pickled.pth", trust_checkpoints=True)
    assert isinstance(sam, torch.nn.Module)


def test_overlay_preview():
    image = Image.new("RGB", (8, 6), (0, 0, 0))
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 1:3] = True
    det = gs.Detection(1, (0.9,), ((4.0, 3.0, 7.0, 5.0),), ("cat",), "detected")
    out = np.asarray(gs.overlay_preview(image, mask, det, colour=(200, 0, 0), alpha=0.5))
    assert out.shape == (6, 8, 3) and tuple(out[1, 1]) == (100, 0, 0) and tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[3, 4]) == (200, 0, 0)  # box outline
    assert np.asarray(gs.overlay_preview(image, None)).sum() == 0
    with pytest.raises(ValueError, match="mask has shape"):
        gs.overlay_preview(image, np.zeros((2, 2), dtype=bool))
