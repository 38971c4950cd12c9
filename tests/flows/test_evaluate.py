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
    monkeypatch.setattr(recognisers, "check_recognisable", lambda name, concepts: None)


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
