"""The miniworld's renderer, captions and corpus: vocabulary sizes, determinism, labels and masks."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from miniworld import world
from miniworld.captions import caption, sample_spec
from miniworld.corpus import build_corpus, spec_of
from miniworld.paths import CAPTIONS_PATH, HELDOUT_CAPTIONS_PATH
from miniworld.render import SceneSpec, Subject, apply_style, labels, render


def test_vocabulary_meets_the_issue_minimums():
    assert len(world.OBJECT_CLASSES) >= 10 and all(len(s) >= 3 for s in world.OBJECTS.values())
    assert len(world.COLOURS) >= 8 and len(world.SCENES) >= 4 and len(world.STYLES) >= 20
    assert len(world.IDENTITIES) >= 200 and len(set(world.IDENTITIES)) == len(world.IDENTITIES)
    assert all(len(n.split()) >= 2 for n in world.IDENTITIES)  # multi-token proper names
    # each identity a distinct emblem (shape, foreground, background)
    assert len(set(world.EMBLEM_SPECS.values())) == len(world.IDENTITIES)


def test_render_is_deterministic_and_masks_cover_the_subject():
    spec = SceneSpec((Subject("object", "cat", "red"),), "meadow", None, seed=11)
    a, b = render(spec), render(spec)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8 and a.masks.shape == (1, 32, 32)
    assert 0.02 < a.masks.mean() < 0.8
    other = render(SceneSpec((Subject("object", "cat", "red"),), "meadow", None, seed=12))
    assert not np.array_equal(a.image, other.image)  # the seed moves the layout


def test_styles_change_pixels_and_labels_name_the_first_subject():
    base = SceneSpec((Subject("object", "ship", "blue"),), "beach", None, seed=3)
    styled = SceneSpec(base.subjects, base.scene, world.STYLES[0], seed=3)
    assert np.abs(render(base).image.astype(int) - render(styled).image.astype(int)).mean() > 5
    lab = labels(styled)
    assert world.HEADS["object"][lab["object"]] == "ship" and world.HEADS["style"][lab["style"]] == world.STYLES[0]
    ident = labels(SceneSpec((Subject("identity", world.IDENTITIES[7]),), "snowfield", None, seed=1))
    assert world.HEADS["identity"][ident["identity"]] == world.IDENTITIES[7]


def test_colour_is_undefined_exactly_under_the_palettes_that_erase_hue():
    # Two colours of (nearly) equal luma and very different hue: a palette that keeps no hue
    # renders them alike, so no classifier can tell them apart and the label must be undefined.
    a = np.full((32, 32, 3), (200, 50, 100), dtype=np.uint8)
    b = np.full((32, 32, 3), (50, 120, 133), dtype=np.uint8)
    luma = np.array([0.299, 0.587, 0.114])
    assert abs(float(a[0, 0] @ luma) - float(b[0, 0] @ luma)) < 0.1
    for style, (palette, _) in world.STYLE_SPECS.items():
        gap = np.abs(apply_style(a, style).astype(int) - apply_style(b, style).astype(int)).max()
        hue_free = palette in world.HUE_FREE_PALETTES
        assert (gap <= 1) if hue_free else (gap > 20), (style, palette, gap)
        lab = labels(SceneSpec((Subject("object", "ship", "blue"),), "beach", style, seed=3))
        assert (lab["colour"] == -100) == hue_free, (style, palette)
        # the shipped CLIP's auxiliary targets (train_clip.SHIPPED_CLIP_HUE_FREE): only monochrome is hue-free
        clip_lab = labels(SceneSpec((Subject("object", "ship", "blue"),), "beach", style, seed=3),
                          hue_free=frozenset({"monochrome"}))
        assert (clip_lab["colour"] == -100) == (palette == "monochrome"), (style, palette)
        assert {k: v for k, v in clip_lab.items() if k != "colour"} == {k: v for k, v in lab.items() if k != "colour"}


def test_captions_name_the_subject_by_class_or_synonym():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        spec = sample_spec(rng, seed)
        text = caption(spec, rng).lower()
        s = spec.subjects[0]
        names = (s.name,) + (world.OBJECTS[s.name] if s.kind == "object" else ())
        assert any(n.lower() in text for n in names), (text, names)


def test_shipped_corpus_and_heldout_set():
    corpus = pq.read_table(CAPTIONS_PATH)
    heldout = pq.read_table(HELDOUT_CAPTIONS_PATH)
    assert corpus.num_rows >= 200_000 and heldout.num_rows >= 1_000
    assert not set(corpus.column("seed").to_pylist()) & set(heldout.column("seed").to_pylist())
    # the stored rows are what the grammar produces for their seeds (the corpus is reproducible)
    rebuilt = build_corpus(50, int(corpus.column("seed")[0].as_py()))
    assert rebuilt.column("caption").to_pylist() == corpus.slice(0, 50).column("caption").to_pylist()
    rows = corpus.slice(0, 200).to_pylist()
    assert sum(len(spec_of(r).subjects) == 2 for r in rows) > 0  # some images hold two subjects
    texts = corpus.slice(0, 20_000).column("caption").to_pylist()
    assert len(set(texts)) > 0.5 * len(texts)  # templates, word order and synonyms vary
