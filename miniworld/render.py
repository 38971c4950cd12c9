"""Deterministic procedural renderer: a `SceneSpec` -> 32x32 RGB image, subject masks, labels.

Drawing happens on a 4x supersampled canvas and is box-filtered down, so edges are antialiased.
All randomness (layout, flips, stars) comes from ``spec.seed``: the same spec gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from miniworld.shapes import EMBLEM_DRAWINGS, OBJECT_DRAWINGS, Primitive
from miniworld.world import (
    COLOUR_RGB,
    EMBLEM_BG,
    EMBLEM_FG,
    EMBLEM_SPECS,
    HEADS,
    HUE_FREE_PALETTES,
    SCENE_RGB,
    STYLE_SPECS,
)

SIZE = 32
_SS = 4  # supersampling factor
_DARK = (30, 30, 30)
_LIGHT = (215, 225, 235)


@dataclass(frozen=True)
class Subject:
    """One thing in the picture: an object class with a colour, or an identity's emblem."""

    kind: str  # "object" or "identity"
    name: str  # object class (world.OBJECT_CLASSES) or identity (world.IDENTITIES)
    colour: str | None = None  # world.COLOURS, objects only


@dataclass(frozen=True)
class SceneSpec:
    """Everything that defines a picture; ``seed`` fixes the layout."""

    subjects: tuple[Subject, ...]
    scene: str
    style: str | None
    seed: int


@dataclass(frozen=True)
class Render:
    """A rendered picture: ``image`` uint8[32, 32, 3], ``masks`` bool[n_subjects, 32, 32]."""

    image: np.ndarray
    masks: np.ndarray
    spec: SceneSpec

    def pil(self) -> Image.Image:
        """The image as a PIL RGB image."""
        return Image.fromarray(self.image, "RGB")


def _background(scene: str, rng: np.random.Generator) -> Image.Image:
    """Vertical two-colour scene with a jittered horizon and a scene-specific detail."""
    top, bottom = (np.array(c, dtype=np.float32) for c in SCENE_RGB[scene])
    n = SIZE * _SS
    horizon = int(rng.integers(13, 20)) * _SS
    rows = np.empty((n, 3), dtype=np.float32)
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    rows[:horizon] = top * (1 - 0.25 * t) + 0.25 * t * bottom
    rows[horizon:] = bottom
    img = Image.fromarray(np.repeat(rows[:, None, :], n, axis=1).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    if scene == "night sky":
        for _ in range(6):
            x, y = rng.integers(0, SIZE, 2) * _SS
            draw.rectangle((x, y // 2, x + _SS - 1, y // 2 + _SS - 1), fill=(250, 250, 210))
    elif scene == "city street":
        x = 0
        while x < n:
            w = int(rng.integers(5, 10)) * _SS
            h = int(rng.integers(4, 12)) * _SS
            draw.rectangle((x, horizon - h, x + w - _SS, horizon), fill=(110, 105, 120))
            x += w
    elif scene == "meadow":
        cx, cy = int(rng.integers(3, 29)) * _SS, 4 * _SS
        draw.ellipse((cx - 3 * _SS, cy - 3 * _SS, cx + 3 * _SS, cy + 3 * _SS), fill=(250, 230, 90))
    elif scene == "beach":
        draw.rectangle((0, horizon - 3 * _SS, n, horizon), fill=(40, 110, 190))
    return img


def _box_points(
    pts: tuple[tuple[float, float], ...], box: tuple[int, int, int], flip: bool
) -> list[tuple[float, float]]:
    x0, y0, s = box
    return [(x0 + (1 - x if flip else x) * s, y0 + y * s) for x, y in pts]


def _draw_primitive(
    draw: ImageDraw.ImageDraw,
    prim: Primitive,
    box: tuple[int, int, int],
    flip: bool,
    fill: tuple[int, ...] | int,
    outline: tuple[int, ...] | int | None,
) -> None:
    kind, pts, _ = prim
    xy = _box_points(pts, box, flip)
    if kind == "poly":
        draw.polygon(xy, fill=fill, outline=outline, width=_SS if outline is not None else 0)
    elif kind == "ellipse":
        (ax, ay), (bx, by) = xy
        rect = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
        draw.ellipse(rect, fill=fill, outline=outline, width=_SS if outline is not None else 0)
    else:
        draw.line(xy, fill=fill, width=_SS + _SS // 2)


def _draw_object(
    img: Image.Image, mask: Image.Image, subject: Subject, box: tuple[int, int, int], flip: bool
) -> None:
    body = COLOUR_RGB[subject.colour or "white"]
    outline = _LIGHT if subject.colour == "black" else _DARK
    colours = {"body": body, "dark": outline, "light": _LIGHT if subject.colour != "white" else (150, 190, 230)}
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    prims = OBJECT_DRAWINGS[subject.name]
    for prim in prims:  # outlines first so that details sit on top of the filled body
        if prim[2] == "body":
            _draw_primitive(draw, prim, box, flip, body, outline)
    for prim in prims:
        if prim[2] == "body":
            _draw_primitive(draw, prim, box, flip, body, None)
        else:
            _draw_primitive(draw, prim, box, flip, colours[prim[2]], None)
        _draw_primitive(mdraw, prim, box, flip, 255, None)


def _draw_emblem(img: Image.Image, mask: Image.Image, subject: Subject, box: tuple[int, int, int]) -> None:
    shape, fg, bg = EMBLEM_SPECS[subject.name]
    x0, y0, s = box
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    rect = (x0, y0, x0 + s - 1, y0 + s - 1)
    draw.rounded_rectangle(rect, radius=s // 6, fill=EMBLEM_BG[bg], outline=_DARK, width=_SS)
    mdraw.rounded_rectangle(rect, radius=s // 6, fill=255)
    inner = (x0 + s // 8, y0 + s // 8, s - s // 4)
    colours = {"fg": EMBLEM_FG[fg], "bg": EMBLEM_BG[bg]}
    for kind, pts, role in EMBLEM_DRAWINGS[shape]:
        _draw_primitive(draw, (kind, pts, role), inner, False, colours[role], None)


def _layout(n: int, kind: str, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Boxes (x0, y0, size) in 32-px units: one big centred subject or two side by side."""
    if n == 1:
        lo, hi = (24, 29) if kind == "identity" else (22, 29)
        s = int(rng.integers(lo, hi))
        base = (SIZE - s) // 2
        x0 = int(np.clip(base + rng.integers(-2, 3), 0, SIZE - s))
        y0 = int(np.clip(base + rng.integers(-2, 3), 0, SIZE - s))
        return [(x0, y0, s)]
    boxes = []
    for i in range(n):
        s = int(rng.integers(14, 17))
        x0 = int(i * 16 + rng.integers(0, 17 - s))
        y0 = int(rng.integers(6, SIZE - s - 2))
        boxes.append((x0, y0, s))
    return boxes


def _palette(img: np.ndarray, palette: str) -> np.ndarray:
    """Recolour float RGB[H, W, 3] in [0, 255] with one of world.STYLE_PALETTES."""
    luma = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if palette == "sepia":
        return np.stack([luma * 0.95 + 40, luma * 0.75 + 20, luma * 0.45], axis=-1)
    if palette == "neon":
        mean = img.mean(axis=-1, keepdims=True)
        return (img - mean) * 2.4 + mean * 0.35
    if palette == "pastel":
        return img * 0.45 + np.array([150, 125, 150], dtype=np.float32)
    if palette == "inverted":
        return 255.0 - img
    if palette == "monochrome":
        g = (luma - 128.0) * 1.6 + 128.0
        return np.repeat(g[..., None], 3, axis=-1)
    raise ValueError(f"palette={palette!r} is not one of world.STYLE_PALETTES")


def _pattern(img: np.ndarray, pattern: str) -> np.ndarray:
    """Overlay one of world.STYLE_PATTERNS (coarse, so an 8x8 latent can hold it)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if pattern == "stripes":
        dark = ((xx + yy) // 6) % 2 == 1
        return img * np.where(dark, 0.55, 1.0)[..., None]
    if pattern == "checker":
        dark = ((xx // 8 + yy // 8) % 2) == 1
        return img * np.where(dark, 0.6, 1.0)[..., None] + np.where(dark, 0, 25)[..., None]
    if pattern == "vignette":
        r2 = ((xx - 15.5) ** 2 + (yy - 15.5) ** 2) / (15.5**2)
        return img * np.clip(1.15 - 0.75 * r2, 0.0, 1.0)[..., None]
    if pattern == "frame":
        out = img.copy()
        edge = (np.minimum(np.minimum(xx, yy), np.minimum(SIZE - 1 - xx, SIZE - 1 - yy)) < 3)
        out[edge] = np.array([235, 175, 35], dtype=np.float32)
        return out
    raise ValueError(f"pattern={pattern!r} is not one of world.STYLE_PATTERNS")


def apply_style(image: np.ndarray, style: str) -> np.ndarray:
    """Apply a named style (palette, then pattern) to uint8[32, 32, 3]; returns uint8."""
    palette, pattern = STYLE_SPECS[style]
    out = _pattern(_palette(image.astype(np.float32), palette), pattern)
    return np.clip(out, 0, 255).astype(np.uint8)


def render(spec: SceneSpec) -> Render:
    """Render ``spec``: deterministic in ``spec`` (its seed fixes layout and scene details)."""
    rng = np.random.default_rng(spec.seed)
    img = _background(spec.scene, rng)
    boxes = _layout(len(spec.subjects), spec.subjects[0].kind, rng)
    masks = []
    for subject, (x0, y0, s) in zip(spec.subjects, boxes, strict=True):
        mask = Image.new("L", img.size, 0)
        box = (x0 * _SS, y0 * _SS, s * _SS)
        if subject.kind == "identity":
            _draw_emblem(img, mask, subject, box)
        else:
            _draw_object(img, mask, subject, box, flip=bool(rng.random() < 0.5))
        masks.append(np.asarray(mask.reduce(_SS)) >= 128)
    image = np.asarray(img.reduce(_SS), dtype=np.uint8)
    if spec.style is not None:
        image = apply_style(image, spec.style)
    return Render(image=image, masks=np.stack(masks), spec=spec)


def labels(spec: SceneSpec, hue_free: frozenset[str] = HUE_FREE_PALETTES) -> dict[str, int]:
    """Classifier targets (indices into world.HEADS) of the first subject; -100 = undefined (the colour of an
    object under a palette in ``hue_free``)."""
    first = spec.subjects[0]
    is_obj = first.kind == "object"
    palette = STYLE_SPECS[spec.style][0] if spec.style else None
    colour_ok = is_obj and palette not in hue_free
    return {
        "kind": HEADS["kind"].index(first.kind),
        "object": HEADS["object"].index(first.name if is_obj else "none"),
        "colour": (HEADS["colour"].index(first.colour) if colour_ok
                   else -100 if is_obj else HEADS["colour"].index("none")),
        "scene": HEADS["scene"].index(spec.scene),
        "style": HEADS["style"].index(spec.style or "none"),
        "identity": HEADS["identity"].index(first.name if not is_obj else "none"),
    }
