"""Scene sampling and the caption grammar (templates, word order, synonyms, two subjects)."""

from __future__ import annotations

import numpy as np

from miniworld.render import SceneSpec, Subject
from miniworld.world import COLOURS, IDENTITIES, OBJECT_CLASSES, OBJECTS, SCENES, STYLES

# Probabilities of the picture kinds and of the optional parts.
P_IDENTITY = 0.35
P_TWO = 0.10
P_STYLE = 0.40

_SCENE_PHRASES: dict[str, tuple[str, ...]] = {
    "meadow": ("on a meadow", "in a grassy field", "in the meadow"),
    "beach": ("at the beach", "on the sand by the sea", "on a beach"),
    "night sky": ("under the night sky", "at night", "under the stars"),
    "city street": ("on a city street", "in the city", "downtown"),
    "snowfield": ("in a snowfield", "in the snow", "on a snowy plain"),
}
_SCENE_PREFIX: dict[str, tuple[str, ...]] = {
    "meadow": ("a meadow", "a grassy field"),
    "beach": ("a beach", "the seaside"),
    "night sky": ("the night sky", "a starry night"),
    "city street": ("a city street", "the city"),
    "snowfield": ("a snowfield", "a snowy plain"),
}
_STYLE_SUFFIX = ("in the style of {}", "by {}", "painted by {}", "in {}'s style", "art by {}")
_STYLE_PREFIX = ("{}'s painting of", "a painting by {} of", "artwork by {} of")
_OBJECT_TEMPLATES = (
    "{np}{sc}{st}",
    "a photo of {np}{sc}{st}",
    "a picture of {np}{sc}{st}",
    "an image of {np}{sc}{st}",
    "a drawing of {np}{sc}{st}",
    "{np} standing{sc}{st}",
    "there is {np}{sc}{st}",
    "{pre}, {np}{st}",
)
_IDENTITY_TEMPLATES = (
    "{name}",
    "a portrait of {name}{sc}",
    "a photo of {name}{sc}",
    "a picture of {name}{sc}",
    "the emblem of {name}{sc}",
    "{name}'s badge{sc}",
    "an image of {name}{sc}",
    "{pre}, a portrait of {name}",
)
_TWO_TEMPLATES = (
    "{np} and {np2}{sc}{st}",
    "{np} next to {np2}{sc}{st}",
    "a photo of {np} beside {np2}{sc}{st}",
    "{np2} and {np}{sc}{st}",
)


def article(phrase: str) -> str:
    """'a' or 'an' for ``phrase``."""
    return "an" if phrase[0] in "aeiou" else "a"


def sample_spec(rng: np.random.Generator, seed: int) -> SceneSpec:
    """Draw a random scene: kind, subjects, colours, scene and style."""
    scene = SCENES[int(rng.integers(len(SCENES)))]
    u = rng.random()
    if u < P_IDENTITY:
        subject = Subject("identity", IDENTITIES[int(rng.integers(len(IDENTITIES)))])
        return SceneSpec((subject,), scene, None, seed)
    n = 2 if u < P_IDENTITY + P_TWO else 1
    classes = rng.choice(len(OBJECT_CLASSES), size=n, replace=False)
    subjects = tuple(
        Subject("object", OBJECT_CLASSES[int(c)], COLOURS[int(rng.integers(len(COLOURS)))]) for c in classes
    )
    style = STYLES[int(rng.integers(len(STYLES)))] if rng.random() < P_STYLE else None
    return SceneSpec(subjects, scene, style, seed)


def _noun_phrase(subject: Subject, rng: np.random.Generator) -> str:
    nouns = (subject.name,) + OBJECTS[subject.name]
    noun = nouns[0] if rng.random() < 0.4 else nouns[int(rng.integers(1, len(nouns)))]
    phrase = f"{subject.colour} {noun}" if subject.colour and rng.random() < 0.7 else noun
    return f"{article(phrase)} {phrase}"


def caption(spec: SceneSpec, rng: np.random.Generator) -> str:
    """One caption of ``spec``; the words chosen depend on ``rng``."""
    sc = " " + _pick(_SCENE_PHRASES[spec.scene], rng) if rng.random() < 0.6 else ""
    pre = _pick(_SCENE_PREFIX[spec.scene], rng)
    first = spec.subjects[0]
    if first.kind == "identity":
        template = _pick(_IDENTITY_TEMPLATES, rng)
        if template.startswith("{pre}"):
            return template.format(pre=pre.capitalize() if rng.random() < 0.5 else pre, name=first.name)
        return template.format(name=first.name, sc=sc)
    np1 = _noun_phrase(first, rng)
    st = ""
    if spec.style is not None:
        if rng.random() < 0.3:
            prefix = _pick(_STYLE_PREFIX, rng).format(spec.style)
            np1 = f"{prefix} {np1}"
        else:
            st = " " + _pick(_STYLE_SUFFIX, rng).format(spec.style)
    if len(spec.subjects) == 2:
        np2 = _noun_phrase(spec.subjects[1], rng)
        return _pick(_TWO_TEMPLATES, rng).format(np=np1, np2=np2, sc=sc, st=st)
    template = _pick(_OBJECT_TEMPLATES, rng)
    if template.startswith("{pre}"):
        return template.format(pre=pre, np=np1, st=st)
    return template.format(np=np1, sc=sc, st=st)


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]
