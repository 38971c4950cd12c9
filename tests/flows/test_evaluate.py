"""Evaluation flow on a tiny pipeline: cached per model, paired seeds, report artifact with grid."""

from PIL import Image

from mace_core import recognisers
from mace_core.concepts import Concept
from mace_core.config import EvaluationConfig


def _fake_recogniser(monkeypatch):
    """Recognise an image as its concept iff its mean red channel is above its mean blue (deterministic)."""
    def load(name, device="cpu"):
        def recognise(images, items):
            out = []
            for img in images:
                import numpy as np
                a = np.asarray(img.convert("RGB"), dtype=float)
                r, b = a[..., 0].mean(), a[..., 2].mean()
                out.append(r > b)
            return out
        return recognise

    monkeypatch.setattr(recognisers, "load_recogniser", load)
    monkeypatch.setattr(recognisers, "check_recognisable", lambda name, concepts, **kw: None)


def test_evaluate_flow_caches_and_reports(tiny_model, store_root, monkeypatch, counting):
    from flows.evaluate import evaluate

    _fake_recogniser(monkeypatch)
    cfg = EvaluationConfig(
        model=tiny_model, erased=(Concept(name="cat", type="object", mapping="forest", synonyms=("kitty",)),),
        kept=(Concept(name="dog", type="object", mapping="sky"),), seeds_per_prompt=2, steps=2,
        prompts="paper", store=store_root,
    )
    first = evaluate(cfg, reference_model=tiny_model)
    # same model as reference: identical seeded images -> identical metrics
    assert first.metrics == first.reference_metrics
    assert set(first.metrics["accuracy"]) == {"erased", "kept", "synonym"}
    assert first.metrics["n_images"] == 6  # (cat, kitty, dog) x 1 prompt x 2 seeds
    grid = Image.open(f"{first.report_dir}/grid.png")
    assert grid.size[1] == 2 * grid.size[0] // 3  # 2 rows (reference, model) x 3 prompt columns
    n_gen = counting.get("generate_images", 0)
    assert n_gen > 0
    second = evaluate(cfg, reference_model=tiny_model)
    assert counting["generate_images"] == n_gen  # all cached: no generation
    assert second.metrics == first.metrics


def test_evaluate_clip_zero_shot_on_prompt_file(tiny_model, store_root, tmp_path, counting):
    """A prompt file + the open_clip recogniser (tiny random model from a weights path): rows carry CLIP scores,
    metrics carry H_a; the cache key follows the file's content, not its path."""
    import shutil

    from flows.evaluate import evaluate
    from tasks import evaluate as ev
    from tasks.store import ArtifactStore
    from tests.helpers.tiny_scorers import TINY_CLIP, build_tiny_clip

    weights = build_tiny_clip(tmp_path / "clip")["pt"]
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,concept,type,evaluation_seed\na photo of a cat,cat,erased,1\n"
                       "a photo of a cat,cat,erased,2\na photo of a dog,dog,others,1\n")
    cfg = EvaluationConfig(model=tiny_model, prompt_file=str(prompts), recogniser="clip_zero_shot",
                           scorer_weights=weights, clip_model=TINY_CLIP, steps=2, store=store_root)
    first = evaluate(cfg)
    m = first.metrics
    assert m["n_images"] == 3 and set(m["clip_score"]) == {"erased", "kept"}
    assert m["h_a"] == m["clip_score"]["kept"] - m["clip_score"]["erased"]
    assert all(0.0 <= p <= 1.0 for p in m["concept_prob"].values())
    n_gen = counting["generate_images"]
    # same content under another path: a store hit
    moved = tmp_path / "moved.csv"
    shutil.copy(prompts, moved)
    assert evaluate(cfg.model_copy(update={"prompt_file": str(moved)})).metrics == m
    assert counting["generate_images"] == n_gen
    # changed content: a new evaluation
    moved.write_text(prompts.read_text().replace("dog", "ship"))
    third = evaluate(cfg.model_copy(update={"prompt_file": str(moved)}))
    assert counting["generate_images"] > n_gen
    assert set(third.metrics["per_concept"]["kept"]) == {"ship"}
    from tasks._cache import files_digest, key_for, model_dir

    key = key_for(ev.STAGE, ev.VERSION, ev._key_config(cfg), ev._key_inputs(cfg, files_digest(model_dir(tiny_model))))
    rows = ev.load_rows(ArtifactStore(store_root), ArtifactStore(store_root).get(ev.STAGE, key))
    assert {"clip_score", "concept_prob", "correct"} <= set(rows[0]) and rows[0]["seed"] == 1
