"""The real data backends inside the erase flow (issue 6): LLM prompts, Grounded-SAM masks, caption priors.

- ``prompts.backend='llm'`` against a scripted OpenAI-compatible server on 127.0.0.1: the run uses the
  server's prompts, a rerun is all hits with no request, and the API key planted in the environment is in no
  file of the store.
- ``masks.backend='grounded_sam'`` on tiny random GroundingDINO / SAM checkpoints: masks, overlay previews
  and the detection record are written, the masker is loaded once, the key follows checkpoint contents.
- The key from a Prefect Secret block when no key variable is set.
- ``check_inputs``: one-line errors for a missing key variable or checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data_stages.conftest import prompts_json
from tests.flows.conftest import make_config

KEY = "sk-planted-SECRET-a9f3c1d07e5b42"
CAT_PROMPTS = ("a cat on a sofa", "a sleepy cat in the sun", "a cat at the window", "an oil painting of a cat")


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("MACE_LLM_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return KEY


def _llm_config(tiny_model, store_root, server, prompts=None):
    return make_config(tiny_model, store_root, concepts=("cat",),
                       prompts={"backend": "llm", "llm_base_url": server.url, "llm_model": "fake-chat",
                                "num_prompts": 4, **(prompts or {})},
                       masks={"backend": "none"}, lora={"steps": 1})


@pytest.fixture(scope="module")
def gsam_files(tmp_path_factory) -> dict[str, str]:
    """Tiny random GroundingDINO (config + checkpoint + BERT dir) and SAM checkpoint, written once."""
    from tests.data_stages._gsam_fixtures import write_tiny_bert, write_tiny_groundingdino, write_tiny_sam

    root = tmp_path_factory.mktemp("gsam")
    bert = write_tiny_bert(root / "bert")
    config, dino = write_tiny_groundingdino(root / "dino", bert)
    sam = write_tiny_sam(root / "sam" / "tiny_sam.pth")
    return {"groundingdino_config": str(config), "groundingdino_checkpoint": str(dino),
            "groundingdino_text_encoder": str(bert), "sam_checkpoint": str(sam)}


@pytest.fixture
def tiny_gsam(monkeypatch, gsam_files):
    """The masks config of the tiny checkpoints; 'vit_b' builds the tiny SAM, GroundingDINO runs at 256 px."""
    import segment_anything

    from tasks import masks as task_masks
    from tests.data_stages._gsam_fixtures import tiny_sam

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: tiny_sam())
    monkeypatch.setattr(task_masks, "DINO_SIZE", 256)  # part of the masker's cache key: never mixed up with 800
    return {"backend": "grounded_sam", "sam_model_type": "vit_b", **gsam_files}


@pytest.fixture(scope="module", autouse=True)
def _free_masker():
    yield
    from tasks import masks as task_masks

    task_masks.clear_maskers()


def _files_containing(root: str, needle: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle`` (plain, or as UTF-16 / JSON-escaped text)."""
    forms = {needle.encode("utf-8"), needle.encode("utf-16-le"), json.dumps(needle).encode("ascii")}
    hits = []
    for p in Path(root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            if any(f in data for f in forms):
                hits.append(str(p))
    return hits


# ----------------------------------------------------------------------------------------------------
# LLM prompts
# ----------------------------------------------------------------------------------------------------


def test_erase_with_llm_prompts_caches_and_never_stores_the_key(tiny_model, store_root, llm_server, api_key):
    from flows.erase import erase
    from mace_core.seeds import concept_seed
    from tasks._cache import open_store
    from tasks.prompts import load_pairs

    llm_server.script((200, prompts_json(*CAT_PROMPTS)))
    cfg = _llm_config(tiny_model, store_root, llm_server)
    first = erase(cfg)
    assert first.row("prompts").misses == 1 and len(llm_server.requests) == 1
    # the run trained on the server's prompts, aligned with their mapping prompts
    store = open_store(store_root)
    stage, key = first.refs["prompts/cat"].split("/")
    pairs = load_pairs(store, store.get(stage, key))
    assert [p.erased for p in pairs] == list(CAT_PROMPTS)
    assert [p.mapping for p in pairs][1] == "a sleepy forest in the sun"
    req, headers = llm_server.requests[0], llm_server.headers[0]
    assert req["model"] == "fake-chat" and req["seed"] == concept_seed(cfg.seed, "cat")
    assert headers["authorization"] == f"Bearer {KEY}"  # the key went to the server ...
    # ... and the manifest records what the key holds: backend, model, instruction, concept, N, seed
    recorded = store.manifest(store.get(stage, key))["config"]
    assert recorded["backend"] == "llm" and recorded["model"] == "fake-chat" and recorded["n"] == 4
    assert recorded["seed"] == concept_seed(cfg.seed, "cat") and recorded["concept"]["name"] == "cat"
    # rerun: all hits, no request
    again = erase(cfg)
    assert again.misses == 0 and len(llm_server.requests) == 1
    # the planted key is in no file of the store (artifacts, manifests, run records, staging leftovers)
    assert _files_containing(store_root, KEY) == []


def test_llm_key_holds_what_the_output_depends_on(tiny_model, store_root, llm_server, api_key, monkeypatch):
    from mace_core.concepts import Concept
    from tasks.prompts import llm_key

    cfg = _llm_config(tiny_model, store_root, llm_server)
    cat = Concept(name="cat", type="object", mapping="forest")
    key, config, inputs = llm_key(cat, cfg.prompts, cfg.seed, cfg.model)
    assert {"backend", "model", "instruction_sha256", "concept", "n", "seed"} <= set(config)
    assert KEY not in json.dumps(config) + json.dumps(inputs)

    def other(**prompts):
        return llm_key(cat, cfg.prompts.model_copy(update=prompts), cfg.seed, cfg.model)[0]

    assert other(llm_model="another-model") != key
    assert other(num_prompts=5) != key
    assert llm_key(cat, cfg.prompts, cfg.seed + 1, cfg.model)[0] != key
    assert llm_key(cat.model_copy(update={"mapping": "tree"}), cfg.prompts, cfg.seed, cfg.model)[0] != key
    # where the model is served, how often to retry and which key is used do not change the prompts
    assert other(llm_base_url="http://127.0.0.1:1/v1", llm_max_retries=7) == key
    monkeypatch.setenv("MACE_LLM_API_KEY", "sk-another-key")
    assert llm_key(cat, cfg.prompts, cfg.seed, cfg.model)[0] == key


def test_llm_failure_names_the_concept_and_hides_the_key(tiny_model, store_root, llm_server, api_key):
    from flows.erase import erase

    llm_server.script((200, prompts_json("a dog", "a cow")))  # never contains the concept
    cfg = _llm_config(tiny_model, store_root, llm_server, prompts={"llm_max_retries": 1})
    with pytest.raises(ValueError) as err:
        erase(cfg)
    msg = str(err.value)
    assert "'cat'" in msg and "missing the concept phrase" in msg and KEY not in msg and "\n" not in msg
    assert len(llm_server.requests) == 2
    assert _files_containing(store_root, KEY) == []


def test_llm_key_from_a_prefect_secret_block(tiny_model, store_root, llm_server, monkeypatch):
    """No key variable set: the key of the Secret block ``mace-llm-api-key`` is sent, and stored nowhere."""
    from prefect.blocks.system import Secret

    from flows.erase import check_inputs, erase
    from tasks.prompts import LLM_KEY_BLOCK

    monkeypatch.delenv("MACE_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = _llm_config(tiny_model, store_root, llm_server)
    with pytest.raises(ValueError, match=f"Secret block '{LLM_KEY_BLOCK}'"):
        check_inputs(cfg)
    Secret(value=KEY).save(LLM_KEY_BLOCK, overwrite=True)
    try:
        check_inputs(cfg)
        llm_server.script((200, prompts_json(*CAT_PROMPTS)))
        assert erase(cfg).row("prompts").misses == 1
        assert llm_server.headers[0]["authorization"] == f"Bearer {KEY}"
        assert _files_containing(store_root, KEY) == []
    finally:
        Secret.delete(LLM_KEY_BLOCK)


# ----------------------------------------------------------------------------------------------------
# check_inputs
# ----------------------------------------------------------------------------------------------------


def test_check_inputs_llm_needs_the_key_variable(tiny_model, store_root, llm_server, monkeypatch):
    from flows.erase import check_inputs

    monkeypatch.delenv("MACE_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = _llm_config(tiny_model, store_root, llm_server, prompts={"num_prompts": 200})
    with pytest.raises(ValueError, match=r"^prompts.backend='llm' needs an API key: set the MACE_LLM_API_KEY "
                                         r"environment variable") as err:
        check_inputs(cfg)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    check_inputs(cfg)  # either variable; and num_prompts is not bounded by the templates
    no_url = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"llm_base_url": None})})
    with pytest.raises(ValueError, match="prompts.llm_base_url"):
        check_inputs(no_url)


def test_check_inputs_grounded_sam_paths(tiny_model, store_root, tmp_path, gsam_files):
    from flows.erase import check_inputs

    ok = make_config(tiny_model, store_root, masks={"backend": "grounded_sam", **gsam_files})
    check_inputs(ok)
    missing = str(tmp_path / "nope" / "sam_vit_h.pth")
    bad = make_config(tiny_model, store_root, masks={"backend": "grounded_sam", **gsam_files,
                                                     "sam_checkpoint": missing})
    with pytest.raises(FileNotFoundError, match=r"^masks.sam_checkpoint '.*sam_vit_h.pth' not found") as err:
        check_inputs(bad)
    assert "\n" not in str(err.value)
    no_bert = make_config(tiny_model, store_root, masks={"backend": "grounded_sam", **gsam_files,
                                                         "groundingdino_text_encoder": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"^masks.groundingdino_text_encoder"):
        check_inputs(no_bert)
    unset = make_config(tiny_model, store_root, masks={"backend": "grounded_sam", **gsam_files,
                                                       "groundingdino_checkpoint": None})
    with pytest.raises(ValueError, match=r"needs masks.groundingdino_checkpoint"):
        check_inputs(unset)
    # style concepts never get masks: no checkpoint is needed
    style = make_config(tiny_model, store_root, concepts=({"name": "van gogh", "type": "style", "mapping": "art"},),
                        masks={"backend": "grounded_sam"})
    check_inputs(style)


# ----------------------------------------------------------------------------------------------------
# Grounded-SAM masks
# ----------------------------------------------------------------------------------------------------


def test_erase_with_grounded_sam_masks_and_previews(tiny_model, store_root, tiny_gsam, tmp_path):
    from flows.erase import erase
    from tasks import masks as task_masks
    from tasks._cache import open_store
    from tasks.images import image_files, load_image_tensor

    cfg = make_config(tiny_model, store_root, concepts=("cat",), masks=tiny_gsam, lora={"steps": 1})
    task_masks.clear_maskers()
    loads = len(task_masks.MASKER_LOADS)
    first = erase(cfg)
    assert first.row("masks").misses == 1 and len(task_masks.MASKER_LOADS) == loads + 1
    store = open_store(store_root)
    ref = store.get(*first.refs["masks/cat"].split("/"))
    images = store.get(*first.refs["images/cat"].split("/"))
    # one binary mask per image, same names; the readers downstream see masks only (not previews)
    names = [p.name for p in image_files(store, images)]
    assert [p.name for p in image_files(store, ref)] == names
    masks = load_image_tensor(image_files(store, ref), 1)
    assert masks.shape == (len(names), 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    # overlay previews for the UI, and the detection record
    previews = task_masks.preview_files(store, ref)
    assert [p.name for p in previews] == names
    from tasks.formats import load_png

    assert all(load_png(p).mode == "RGB" and load_png(p).size == (32, 32) for p in previews)
    dets = task_masks.load_detections(store, ref)
    assert [d["file"] for d in dets] == names
    assert all(d["outcome"] in ("detected", "full") and len(d["boxes_xyxy"]) == d["n_boxes"] for d in dets)
    assert store.verify() == []
    # rerun: all hits, the masker is not loaded again
    again = erase(cfg)
    assert again.misses == 0 and len(task_masks.MASKER_LOADS) == loads + 1
    # the key follows checkpoint contents, not paths: a moved checkpoint is still a hit ...
    moved = tmp_path / "moved_sam.pth"
    shutil.copy(tiny_gsam["sam_checkpoint"], moved)
    cfg_moved = cfg.model_copy(update={"masks": cfg.masks.model_copy(update={"sam_checkpoint": str(moved)})})
    assert erase(cfg_moved).row("masks").misses == 0
    # ... and a changed one is a miss (nothing upstream; downstream only if the mask bytes changed)
    sd = torch.load(moved, weights_only=True)
    sd["mask_decoder.iou_prediction_head.layers.0.bias"] += 1.0  # scores only: same masks
    torch.save(sd, moved)
    changed = erase(cfg_moved)
    assert changed.row("masks").misses == 1 and changed.row("images").misses == 0
    assert changed.row("prompts").misses == 0
    new_ref = store.get(*changed.refs["masks/cat"].split("/"))
    assert new_ref.key != ref.key
    assert changed.row("lora").misses == (0 if new_ref.digest == ref.digest else 1)


def test_grounded_sam_empty_detection_policy(tiny_model, store_root, tiny_gsam, monkeypatch):
    """Nothing found in image 0: 'full' gives a whole-image mask, 'skip' an all-zero one (no loss on it)."""
    from prefect import flow

    from mace_core import grounded_sam as gs
    from mace_core.concepts import Concept
    from tasks import formats
    from tasks import masks as task_masks
    from tasks._cache import key_for, open_store
    from tasks.images import RECORD, image_files, load_image_tensor

    # an images artifact of three small random images, written directly
    store = open_store(store_root)
    key = key_for("images", "test", {"random": 3}, {})
    with store.writer("images", key, config={"random": 3}, inputs={}, version="test") as out:
        for i in range(3):
            pixels = np.random.RandomState(i).randint(0, 256, (32, 32, 3), dtype=np.uint8)
            formats.save_png(out / f"{i:04d}.png", pixels)
        formats.save_table(out / RECORD, {"file": [f"{i:04d}.png" for i in range(3)],
                                          "prompt": ["a photo of the cat"] * 3, "seed": [0, 1, 2]})
    images = store.get("images", key)
    calls = {"n": 0}

    def detect(self, image, phrase, box_threshold, text_threshold):  # known boxes; the real SAM segments them
        calls["n"] += 1
        if calls["n"] % 3 == 1:  # the first image of each run: nothing detected
            return torch.zeros(0, 4), torch.zeros(0), []
        return torch.tensor([[0.5, 0.5, 0.5, 0.5]]), torch.tensor([0.9]), [phrase]

    monkeypatch.setattr(gs.GroundedSam, "detect", detect)
    cat = Concept(name="cat", type="object", mapping="forest")
    base = make_config(tiny_model, store_root, concepts=("cat",), masks=tiny_gsam)

    @flow(persist_result=False)
    def run_masks(on_empty: str):
        cfg = base.masks.model_copy(update={"on_empty": on_empty})
        return task_masks.masks_task(cat, 7, images, cfg, base.model, "m" * 64, store_root)

    full, skip = run_masks("full"), run_masks("skip")
    assert full.key != skip.key
    m_full = load_image_tensor(image_files(store, full), 1)
    m_skip = load_image_tensor(image_files(store, skip), 1)
    assert m_full[0].min() == 1.0 and m_skip[0].max() == 0.0
    torch.testing.assert_close(m_full[1:], m_skip[1:])
    assert [d["outcome"] for d in task_masks.load_detections(store, skip)][0] == "skipped"
    assert [d["outcome"] for d in task_masks.load_detections(store, full)][0] == "full"
    assert len(task_masks.preview_files(store, skip)) == 3
    # nothing detected anywhere with 'skip': a one-line error instead of an empty training signal
    monkeypatch.setattr(gs.GroundedSam, "detect", lambda self, *a: (torch.zeros(0, 4), torch.zeros(0), []))
    cfg_none = base.masks.model_copy(update={"on_empty": "skip", "box_threshold": 0.5})

    @flow(persist_result=False)
    def run_none():
        return task_masks.masks_task(cat, 7, images, cfg_none, base.model, "m" * 64, store_root)

    with pytest.raises(ValueError, match=r"no 'cat' detected in any of its 3 images"):
        run_none()
