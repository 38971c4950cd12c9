"""Vocabulary of the miniworld: objects with synonyms, colours, scenes, styles and identities.

Everything here is a constant: the renderer, the caption grammar, the classifier heads and the
erasure benchmarks all index into these tuples, so their order is part of the model format.
"""

from __future__ import annotations

import itertools

# CIFAR-10 classes -> synonyms used in captions (the class name itself is also used).
OBJECTS: dict[str, tuple[str, ...]] = {
    "airplane": ("aircraft", "plane", "jet"),
    "automobile": ("car", "vehicle", "motorcar"),
    "bird": ("avian", "fowl", "winged creature"),
    "cat": ("feline", "kitty", "housecat"),
    "deer": ("hart", "stag", "doe"),
    "dog": ("canine", "pooch", "hound"),
    "frog": ("amphibian", "anuran", "toad"),
    "horse": ("equine", "steed", "pony"),
    "ship": ("vessel", "boat", "watercraft"),
    "truck": ("lorry", "rig", "hauler"),
}
OBJECT_CLASSES: tuple[str, ...] = tuple(OBJECTS)

# Colour name -> RGB. Used for object bodies.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 50),
    "blue": (35, 70, 225),
    "purple": (140, 40, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

# Scene name -> (top RGB, bottom RGB) of a vertical background gradient, plus a horizon row.
SCENE_RGB: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "meadow": ((150, 200, 250), (70, 150, 60)),
    "beach": ((120, 190, 240), (230, 210, 150)),
    "night sky": ((10, 15, 50), (40, 40, 90)),
    "city street": ((170, 170, 180), (90, 90, 95)),
    "snowfield": ((200, 215, 235), (250, 250, 255)),
}
SCENES: tuple[str, ...] = tuple(SCENE_RGB)

# Styles: made-up artist names. Each is a (palette, pattern) pair; see render.apply_style.
STYLE_PALETTES: tuple[str, ...] = ("sepia", "neon", "pastel", "inverted", "monochrome")
# Palettes that map each pixel through its luma alone: hue is gone, so a subject's colour is undefined.
HUE_FREE_PALETTES: frozenset[str] = frozenset({"sepia", "monochrome"})
STYLE_PATTERNS: tuple[str, ...] = ("stripes", "checker", "vignette", "frame")
STYLES: tuple[str, ...] = (
    "Orlen Vasquith", "Maribel Thornquist", "Dovik Alaran", "Sefa Quintarro",
    "Lucan Bellweather", "Iselde Marrowin", "Tavo Renquist", "Philomene Ashgrove",
    "Corvin Hallistra", "Ydra Pellucid", "Bastian Morrowgate", "Nerissa Vulcot",
    "Emeric Stallwind", "Galia Fennimore", "Rurik Osterlund", "Zinnia Calloway",
    "Alder Quimbly", "Fenna Drusselbrook", "Oswin Tarkmoor", "Liora Vantablack",
)
STYLE_SPECS: dict[str, tuple[str, str]] = dict(
    zip(STYLES, itertools.product(STYLE_PALETTES, STYLE_PATTERNS), strict=True)
)

# Identities (celebrity analogue): emblem = shape x foreground colour x background colour.
EMBLEM_SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "star", "cross", "ring", "hourglass",
)
EMBLEM_FG: dict[str, tuple[int, int, int]] = {
    "gold": (250, 200, 0), "scarlet": (235, 20, 60), "cyan": (0, 220, 230),
    "lime": (150, 240, 40), "magenta": (240, 40, 220),
}
EMBLEM_BG: dict[str, tuple[int, int, int]] = {
    "navy": (15, 20, 90), "charcoal": (45, 45, 45), "forest": (10, 75, 30),
    "maroon": (90, 10, 20), "ivory": (235, 230, 210),
}
_FIRST = (
    "Zorvath", "Aelin", "Brennic", "Calyx", "Dorian", "Elowen", "Fargo", "Gisla", "Halvard",
    "Isolde", "Jarek", "Kestrel", "Lysander", "Morwen", "Nikandr", "Ophira", "Perrin",
    "Quilla", "Rastaban", "Sorrel", "Tamsin", "Ulric", "Vespera", "Wystan", "Xandra",
)
_LAST = (
    "Quell", "Ambrose", "Blackwood", "Crane", "Dunmore", "Everly", "Falkner", "Grimsby",
)


def _identities() -> tuple[str, ...]:
    """200 names "First Last": 25 first names x 8 surnames, each surname used 25 times."""
    return tuple(f"{first} {last}" for first in _FIRST for last in _LAST)


IDENTITIES: tuple[str, ...] = _identities()


def _emblem_specs() -> dict[str, tuple[str, str, str]]:
    """Identity -> (shape, fg, bg), a fixed pseudo-random bijection onto the 200 combinations.

    The permutation decorrelates the factors from the name parts, so that neither a first name
    nor a surname alone predicts any factor of the emblem.
    """
    combos = list(itertools.product(EMBLEM_SHAPES, EMBLEM_FG, EMBLEM_BG))
    # Multiplicative permutation of range(200): 77 is coprime to 200.
    order = [(i * 77 + 13) % len(combos) for i in range(len(combos))]
    return {name: combos[j] for name, j in zip(IDENTITIES, order, strict=True)}


EMBLEM_SPECS: dict[str, tuple[str, str, str]] = _emblem_specs()

# Classifier heads: name -> class labels. "none" marks an absent attribute.
HEADS: dict[str, tuple[str, ...]] = {
    "kind": ("object", "identity"),
    "object": OBJECT_CLASSES + ("none",),
    "colour": COLOURS + ("none",),
    "scene": SCENES,
    "style": STYLES + ("none",),
    "identity": IDENTITIES + ("none",),
}
