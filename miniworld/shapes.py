"""Vector drawings of the ten object classes and the eight emblem shapes, in unit coordinates.

A drawing is a tuple of primitives ``(kind, points, role)``: ``kind`` is "poly", "ellipse" or
"line"; ``points`` are (x, y) in [0, 1]^2 (y down; an ellipse gives its two corners, a line its
end points); ``role`` is "body" (the object's colour), "dark" or "light" (details).
"""

from __future__ import annotations

import math

Point = tuple[float, float]
Primitive = tuple[str, tuple[Point, ...], str]


def _rect(x0: float, y0: float, x1: float, y1: float, role: str = "body") -> Primitive:
    return ("poly", ((x0, y0), (x1, y0), (x1, y1), (x0, y1)), role)


def _ell(x0: float, y0: float, x1: float, y1: float, role: str = "body") -> Primitive:
    return ("ellipse", ((x0, y0), (x1, y1)), role)


def _poly(*pts: Point, role: str = "body") -> Primitive:
    return ("poly", tuple(pts), role)


def _legs(xs: tuple[float, ...], y0: float, y1: float, w: float) -> tuple[Primitive, ...]:
    return tuple(_rect(x, y0, x + w, y1) for x in xs)


OBJECT_DRAWINGS: dict[str, tuple[Primitive, ...]] = {
    "airplane": (
        _ell(0.03, 0.42, 0.97, 0.58),
        _poly((0.38, 0.5), (0.62, 0.5), (0.46, 0.04), (0.38, 0.04)),
        _poly((0.38, 0.5), (0.62, 0.5), (0.46, 0.96), (0.38, 0.96)),
        _poly((0.03, 0.5), (0.16, 0.5), (0.1, 0.26), (0.03, 0.26)),
        _ell(0.8, 0.45, 0.92, 0.55, "light"),
    ),
    "automobile": (
        _rect(0.04, 0.45, 0.96, 0.74),
        _poly((0.22, 0.46), (0.34, 0.2), (0.68, 0.2), (0.8, 0.46)),
        _poly((0.37, 0.26), (0.64, 0.26), (0.72, 0.43), (0.31, 0.43), role="light"),
        _ell(0.12, 0.62, 0.38, 0.88, "dark"),
        _ell(0.62, 0.62, 0.88, 0.88, "dark"),
    ),
    "bird": (
        _ell(0.22, 0.4, 0.74, 0.7),
        _ell(0.64, 0.24, 0.88, 0.48),
        _poly((0.87, 0.32), (0.99, 0.38), (0.87, 0.44), role="dark"),
        _poly((0.32, 0.52), (0.6, 0.5), (0.25, 0.06)),
        _poly((0.26, 0.52), (0.02, 0.4), (0.02, 0.66)),
        _rect(0.44, 0.68, 0.48, 0.9, "dark"),
        _rect(0.54, 0.68, 0.58, 0.9, "dark"),
        _ell(0.76, 0.3, 0.81, 0.36, "dark"),
    ),
    "cat": (
        _ell(0.16, 0.48, 0.74, 0.88),
        _ell(0.54, 0.18, 0.92, 0.56),
        _poly((0.56, 0.32), (0.6, 0.02), (0.72, 0.22)),
        _poly((0.74, 0.22), (0.87, 0.02), (0.9, 0.32)),
        _poly((0.2, 0.72), (0.02, 0.3), (0.09, 0.27), (0.27, 0.64)),
        _ell(0.62, 0.32, 0.69, 0.4, "dark"),
        _ell(0.77, 0.32, 0.84, 0.4, "dark"),
    ),
    "deer": (
        _ell(0.16, 0.36, 0.74, 0.6),
        *_legs((0.2, 0.3, 0.58, 0.66), 0.52, 0.98, 0.05),
        _poly((0.6, 0.44), (0.7, 0.2), (0.78, 0.22), (0.72, 0.48)),
        _ell(0.68, 0.14, 0.92, 0.3),
        ("line", ((0.72, 0.16), (0.62, 0.0)), "dark"),
        ("line", ((0.66, 0.08), (0.56, 0.04)), "dark"),
        ("line", ((0.84, 0.16), (0.94, 0.0)), "dark"),
        ("line", ((0.9, 0.08), (1.0, 0.06)), "dark"),
    ),
    "dog": (
        _ell(0.14, 0.4, 0.78, 0.7),
        *_legs((0.2, 0.32, 0.56, 0.68), 0.6, 0.94, 0.08),
        _ell(0.64, 0.16, 0.96, 0.46),
        _ell(0.86, 0.3, 1.0, 0.44),
        _ell(0.62, 0.18, 0.74, 0.54, "dark"),
        _poly((0.18, 0.48), (0.04, 0.2), (0.1, 0.17), (0.24, 0.44)),
        _ell(0.96, 0.32, 1.0, 0.38, "dark"),
    ),
    "frog": (
        _ell(0.08, 0.44, 0.92, 0.86),
        _ell(0.16, 0.24, 0.44, 0.52),
        _ell(0.56, 0.24, 0.84, 0.52),
        _ell(0.24, 0.32, 0.36, 0.44, "dark"),
        _ell(0.64, 0.32, 0.76, 0.44, "dark"),
        _poly((0.08, 0.7), (0.0, 0.96), (0.3, 0.96), (0.22, 0.8)),
        _poly((0.92, 0.7), (1.0, 0.96), (0.7, 0.96), (0.78, 0.8)),
        ("line", ((0.3, 0.7), (0.7, 0.7)), "dark"),
    ),
    "horse": (
        _ell(0.12, 0.34, 0.74, 0.62),
        *_legs((0.16, 0.28, 0.56, 0.66), 0.54, 0.98, 0.06),
        _poly((0.58, 0.42), (0.72, 0.08), (0.86, 0.1), (0.74, 0.48)),
        _poly((0.72, 0.06), (0.99, 0.2), (0.96, 0.3), (0.76, 0.22)),
        _poly((0.7, 0.06), (0.6, 0.36), (0.64, 0.38), (0.74, 0.1), role="dark"),
        _poly((0.13, 0.4), (0.02, 0.8), (0.08, 0.82), (0.17, 0.46), role="dark"),
    ),
    "ship": (
        _poly((0.02, 0.6), (0.98, 0.6), (0.82, 0.86), (0.18, 0.86)),
        _rect(0.48, 0.06, 0.52, 0.6, "dark"),
        _poly((0.54, 0.08), (0.54, 0.56), (0.9, 0.56), role="light"),
        _poly((0.46, 0.14), (0.46, 0.56), (0.18, 0.56), role="light"),
        _rect(0.26, 0.6, 0.74, 0.66, "dark"),
    ),
    "truck": (
        _rect(0.03, 0.12, 0.64, 0.74),
        _rect(0.66, 0.34, 0.97, 0.74),
        _rect(0.72, 0.4, 0.91, 0.54, "light"),
        _ell(0.08, 0.66, 0.28, 0.9, "dark"),
        _ell(0.38, 0.66, 0.58, 0.9, "dark"),
        _ell(0.72, 0.66, 0.92, 0.9, "dark"),
    ),
}


def _star(n: int, r_out: float, r_in: float) -> tuple[Point, ...]:
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = math.pi * i / n - math.pi / 2
        pts.append((0.5 + r * math.cos(a), 0.5 + r * math.sin(a)))
    return tuple(pts)


# Emblem shapes: "fg" primitives on the badge; "bg" cuts a hole back to the badge colour.
EMBLEM_DRAWINGS: dict[str, tuple[tuple[str, tuple[Point, ...], str], ...]] = {
    "circle": (("ellipse", ((0.14, 0.14), (0.86, 0.86)), "fg"),),
    "square": (("poly", ((0.18, 0.18), (0.82, 0.18), (0.82, 0.82), (0.18, 0.82)), "fg"),),
    "triangle": (("poly", ((0.5, 0.08), (0.94, 0.86), (0.06, 0.86)), "fg"),),
    "diamond": (("poly", ((0.5, 0.04), (0.96, 0.5), (0.5, 0.96), (0.04, 0.5)), "fg"),),
    "star": (("poly", _star(5, 0.48, 0.2), "fg"),),
    "cross": (
        ("poly", ((0.36, 0.08), (0.64, 0.08), (0.64, 0.92), (0.36, 0.92)), "fg"),
        ("poly", ((0.08, 0.36), (0.92, 0.36), (0.92, 0.64), (0.08, 0.64)), "fg"),
    ),
    "ring": (
        ("ellipse", ((0.08, 0.08), (0.92, 0.92)), "fg"),
        ("ellipse", ((0.32, 0.32), (0.68, 0.68)), "bg"),
    ),
    "hourglass": (
        ("poly", ((0.1, 0.08), (0.9, 0.08), (0.5, 0.5)), "fg"),
        ("poly", ((0.1, 0.92), (0.9, 0.92), (0.5, 0.5)), "fg"),
    ),
}
