"""Product silhouettes for the sample catalog: one drawing function per item shape.

Each function draws one product into a :class:`Pen` (``pen.py``) in coordinates normalised to the
product's bounding box (x right, y down, both 0..1). ``body`` calls add to the silhouette
that gets the material texture (leather, check, quilting ...); ``part`` calls add opaque
pieces in a fixed colour (gold hardware, rubber soles, dark lenses); ``line`` calls draw
seams and folds on top without changing the silhouette. :data:`SHAPES` maps a shape key to
its bounding-box aspect ratio (width / height) and its function.

The shapes are deliberately few and far apart (a tote has two loop handles, a Lola bag a
gold chain arc, a crossbody bag a half-moon body on a thin V strap ...) so that a tiny
vision model at 112 px can tell them apart; see ``productvlm.synth.generate`` for how a
shape maps to a category and title words.
"""

from __future__ import annotations

from collections.abc import Callable

from productvlm.synth.pen import DARK, GOLD, LENS, SHINE, SOLE, Pen, Point, arc, mirror

# ---- bags -------------------------------------------------------------------------------


def tote(p: Pen) -> None:
    p.body([(0.1, 0.4), (0.9, 0.4), (0.98, 1.0), (0.02, 1.0)])
    p.body_line(arc(0.5, 0.42, 0.2, 0.36, 180, 360), 0.035)
    p.body_line(arc(0.5, 0.42, 0.27, 0.3, 180, 360), 0.035)
    p.line([(0.1, 0.45), (0.9, 0.45)], 0.006)
    for x in (0.27, 0.7, 0.23, 0.77):
        p.part_rect((x - 0.03, 0.4, x + 0.03, 0.5), p.shade(0.7))


def lola(p: Pen) -> None:
    p.body_rect((0.08, 0.44, 0.92, 1.0), 0.08)
    p.line([(0.08, 0.74), (0.3, 0.83), (0.5, 0.85), (0.7, 0.83), (0.92, 0.74)], 0.008)
    p.part_rect((0.45, 0.79, 0.55, 0.87), GOLD, 0.01)
    for x, y in arc(0.5, 0.46, 0.4, 0.44, 180, 360, 26):
        p.part_ellipse((x - 0.022, y - 0.022, x + 0.022, y + 0.022), GOLD)


def crossbody(p: Pen) -> None:
    p.body_pie((0.12, 0.1, 0.88, 1.0), 0, 180)
    p.body_line([(0.16, 0.56), (0.5, 0.02), (0.84, 0.56)], 0.018)
    p.line(arc(0.5, 0.55, 0.38, 0.18, 0, 180), 0.007)
    p.part_ellipse((0.46, 0.68, 0.54, 0.76), GOLD)
    for x in (0.16, 0.84):
        p.part_ellipse((x - 0.03, 0.52, x + 0.03, 0.58), GOLD)


def backpack(p: Pen) -> None:
    p.body_rect((0.08, 0.14, 0.92, 1.0), 0.2)
    p.body_line(arc(0.5, 0.16, 0.13, 0.13, 180, 360), 0.04)
    p.outline((0.2, 0.56, 0.8, 0.94), 0.012, 0.08)
    p.line(arc(0.5, 0.42, 0.38, 0.26, 200, 340), 0.008)
    p.part_rect((0.46, 0.58, 0.54, 0.64), GOLD)


def card_case(p: Pen) -> None:
    p.body_rect((0.02, 0.04, 0.98, 0.96), 0.05)
    for y in (0.3, 0.5):
        p.line(arc(0.5, y - 0.35, 0.48, 0.4, 20, 160), 0.01)
    p.outline((0.06, 0.1, 0.94, 0.9), 0.006, 0.04)


def wallet(p: Pen) -> None:
    p.body_rect((0.02, 0.06, 0.98, 0.94), 0.06)
    p.outline((0.05, 0.14, 0.95, 0.86), 0.01, 0.05, (*GOLD, 255))
    p.part_rect((0.9, 0.4, 0.99, 0.6), GOLD, 0.01)


# ---- shoes ------------------------------------------------------------------------------


def sneakers(p: Pen) -> None:
    p.body([(0.03, 0.84), (0.03, 0.44), (0.1, 0.28), (0.3, 0.27), (0.46, 0.36), (0.7, 0.5),
            (0.9, 0.58), (0.99, 0.72), (0.99, 0.84)])
    p.part([(0.0, 0.82), (1.0, 0.82), (0.99, 0.96), (0.03, 0.99)], SOLE)
    p.part_ellipse((0.08, 0.24, 0.32, 0.34), p.shade(0.45))
    for i in range(5):
        x = 0.36 + i * 0.055
        p.line([(x, 0.32 + i * 0.035), (x + 0.05, 0.38 + i * 0.035)], 0.012, (*SOLE, 255))


def boots(p: Pen) -> None:
    p.body([(0.16, 0.0), (0.5, 0.0), (0.54, 0.56), (0.74, 0.66), (0.94, 0.76), (0.98, 0.9),
            (0.16, 0.9)])
    p.part([(0.13, 0.88), (0.99, 0.88), (0.98, 0.95), (0.13, 0.95)], DARK)
    p.part_rect((0.13, 0.9, 0.34, 1.0), DARK)
    p.line([(0.2, 0.05), (0.2, 0.6), (0.5, 0.6), (0.5, 0.05)], 0.012)
    p.part_rect((0.14, 0.0, 0.24, 0.1), p.shade(0.6))


# ---- accessories ------------------------------------------------------------------------

_LENSES: dict[str, list[Point]] = {
    # right lens in local units (x outwards to the right, y down), mirrored for the left one
    "cateye": [(-0.95, -0.55), (-0.1, -0.72), (0.8, -0.98), (1.0, -0.5), (0.8, 0.45),
               (0.3, 0.85), (-0.5, 0.8), (-0.95, 0.3)],
    "square": [(-1.0, -0.8), (1.0, -0.8), (1.0, 0.8), (-1.0, 0.8)],
    "round": arc(0.0, 0.0, 0.92, 0.92, 0, 360, 32),
}


def _glasses(p: Pen, kind: str) -> None:
    for cx, flip in ((0.73, 1), (0.27, -1)):
        for scale, rgb in ((1.22, None), (1.0, LENS)):
            pts = [(cx + flip * x * 0.2 * scale, 0.52 + y * 0.38 * scale) for x, y in _LENSES[kind]]
            if rgb is None:
                p.body(pts)
            else:
                p.part(pts, rgb)
    p.body_line([(0.44, 0.42), (0.5, 0.38), (0.56, 0.42)], 0.04)
    p.body_line([(0.0, 0.36), (0.04, 0.36)], 0.06)
    p.body_line([(0.96, 0.36), (1.0, 0.36)], 0.06)
    for cx in (0.27, 0.73):
        p.line([(cx - 0.1, 0.35), (cx - 0.02, 0.6)], 0.012, SHINE)


def sunglasses_cateye(p: Pen) -> None:
    _glasses(p, "cateye")


def sunglasses_square(p: Pen) -> None:
    _glasses(p, "square")


def sunglasses_round(p: Pen) -> None:
    _glasses(p, "round")


def belt(p: Pen) -> None:
    p.body([(0.06, 0.3), (0.93, 0.3), (1.0, 0.5), (0.93, 0.7), (0.06, 0.7)])
    for box in ((0.0, 0.1, 0.035, 0.9), (0.14, 0.1, 0.175, 0.9), (0.0, 0.1, 0.175, 0.18),
                (0.0, 0.82, 0.175, 0.9)):
        p.part_rect(box, GOLD)
    p.part_line([(0.02, 0.5), (0.2, 0.5)], 0.012, GOLD)
    for i in range(5):
        p.dot(0.55 + i * 0.07, 0.5, 0.008, (20, 20, 20, 200))
    p.line([(0.2, 0.34), (0.92, 0.34)], 0.003)
    p.line([(0.2, 0.66), (0.92, 0.66)], 0.003)


def cap(p: Pen) -> None:
    p.body_pie((0.02, 0.08, 0.78, 1.3), 180, 360)
    p.body([(0.55, 0.62), (0.8, 0.64), (0.99, 0.74), (0.97, 0.82), (0.6, 0.76)])
    p.line([(0.03, 0.68), (0.77, 0.68)], 0.02, (0, 0, 0, 60))
    for pts in (arc(0.4, 0.69, 0.16, 0.6, 270, 360), arc(0.4, 0.69, 0.16, 0.6, 180, 270)):
        p.line(pts, 0.006)
    p.part_ellipse((0.37, 0.05, 0.43, 0.11), p.shade(0.7))


def scarf(p: Pen) -> None:
    bottom = 0.88 if "fringe" in p.flags else 0.97
    p.body_rect((0.08, 0.02, 0.92, bottom), 0.06)
    p.line([(0.5, 0.12), (0.5, bottom)], 0.012)
    p.line([(0.1, 0.2), (0.9, 0.3)], 0.02, (0, 0, 0, 35))
    if "fringe" in p.flags:
        n = 22
        for i in range(n):
            x = 0.1 + 0.8 * i / (n - 1)
            p.body_line([(x, bottom - 0.01), (x + 0.004, 1.0)], 0.012)


# ---- clothing ---------------------------------------------------------------------------


def _trench(p: Pen, length: float) -> None:
    s = 1 / length  # the coat is drawn in units of the long coat, then cut at ``length``

    def y(v: float) -> float:
        return min(v, length) * s

    hem = y(1.0)
    p.body([(0.38, 0.0), (0.62, 0.0), (0.82, y(0.05)), (0.86, y(0.2)), (0.94, hem),
            (0.06, hem), (0.14, y(0.2)), (0.18, y(0.05))])
    sleeve = [(0.18, y(0.05)), (0.1, y(0.08)), (0.0, y(0.56)), (0.1, y(0.58)), (0.17, y(0.26))]
    p.body(sleeve)
    p.body(mirror(sleeve))
    p.line([(0.4, 0.0), (0.5, y(0.3)), (0.6, 0.0)], 0.012)
    p.line([(0.33, y(0.03)), (0.5, y(0.3)), (0.64, y(0.06))], 0.008)
    for row in range(3):
        for x in (0.4, 0.6):
            yy = y(0.2 + row * 0.08)
            p.part_ellipse((x - 0.025, yy - 0.015, x + 0.025, yy + 0.015), DARK)
    p.part_rect((0.13, y(0.4), 0.87, y(0.45)), p.shade(0.75))
    p.part_rect((0.46, y(0.39), 0.54, y(0.46)), GOLD)
    p.line([(0.5, y(0.46)), (0.52, hem)], 0.008)


def trench_long(p: Pen) -> None:
    _trench(p, 1.0)


def trench_short(p: Pen) -> None:
    _trench(p, 0.7)


def puffer(p: Pen) -> None:
    body = [(0.33, 0.0), (0.67, 0.0), (0.7, 0.06), (0.86, 0.1), (0.9, 0.96), (0.1, 0.96),
            (0.14, 0.1), (0.3, 0.06)]
    p.body(body)
    sleeve = [(0.15, 0.1), (0.03, 0.2), (0.0, 0.92), (0.15, 0.92)]
    p.body(sleeve)
    p.body(mirror(sleeve))
    for i in range(1, 8):
        yy = 0.08 + i * 0.11
        p.line([(0.0, yy), (1.0, yy)], 0.012, (0, 0, 0, 110))
        p.line([(0.02, yy + 0.04), (0.98, yy + 0.04)], 0.02, (255, 255, 255, 45))
    p.line([(0.5, 0.02), (0.5, 0.96)], 0.01, (*GOLD, 255))


def tshirt(p: Pen) -> None:
    p.body([(0.36, 0.04), (0.64, 0.04), (0.8, 0.08), (1.0, 0.26), (0.9, 0.42), (0.8, 0.36),
            (0.8, 1.0), (0.2, 1.0), (0.2, 0.36), (0.1, 0.42), (0.0, 0.26), (0.2, 0.08)])
    p.part_ellipse((0.38, 0.0, 0.62, 0.13), p.shade(0.55))
    p.line(arc(0.5, 0.065, 0.13, 0.075, 0, 180), 0.015)


def shirt(p: Pen) -> None:
    hem = [(0.84, 0.94), (0.7, 0.99), (0.5, 0.95), (0.3, 0.99), (0.16, 0.94)]
    p.body([(0.38, 0.03), (0.62, 0.03), (0.82, 0.08), (0.86, 0.2), *hem, (0.14, 0.2),
            (0.18, 0.08)])
    sleeve = [(0.18, 0.08), (0.12, 0.12), (0.02, 0.8), (0.13, 0.83), (0.19, 0.36)]
    p.body(sleeve)
    p.body(mirror(sleeve))
    p.part([(0.37, 0.0), (0.5, 0.1), (0.34, 0.16)], p.shade(0.8))
    p.part([(0.63, 0.0), (0.5, 0.1), (0.66, 0.16)], p.shade(0.8))
    p.line([(0.5, 0.1), (0.5, 0.95)], 0.01)
    for i in range(6):
        p.dot(0.5, 0.17 + i * 0.13, 0.01, (245, 245, 240, 230))


def sweater(p: Pen) -> None:
    p.body([(0.34, 0.04), (0.66, 0.04), (0.8, 0.08), (0.8, 0.95), (0.2, 0.95), (0.2, 0.08)])
    sleeve = [(0.2, 0.08), (0.0, 0.72), (0.1, 0.8), (0.21, 0.36)]
    p.body(sleeve)
    p.body(mirror(sleeve))
    band = p.shade(0.78)
    p.part_rect((0.2, 0.85, 0.8, 0.96), band)
    for cuff in ([(0.0, 0.72), (0.1, 0.8), (0.13, 0.72), (0.03, 0.64)],):
        p.part(cuff, band)
        p.part(mirror(cuff), band)
    p.line(arc(0.5, 0.04, 0.17, 0.07, 0, 180), 0.03, (0, 0, 0, 70))
    for i in range(12):
        x = 0.22 + i * 0.05
        p.line([(x, 0.86), (x, 0.95)], 0.006)


def dress(p: Pen) -> None:
    p.body_line([(0.36, 0.0), (0.38, 0.1)], 0.02)
    p.body_line([(0.64, 0.0), (0.62, 0.1)], 0.02)
    p.body([(0.33, 0.08), (0.67, 0.08), (0.64, 0.38), (0.96, 1.0), (0.04, 1.0), (0.36, 0.38)])
    p.line([(0.36, 0.38), (0.64, 0.38)], 0.012)
    for x0, x1 in ((0.42, 0.28), (0.5, 0.5), (0.58, 0.72)):
        p.line([(x0, 0.42), (x1, 0.98)], 0.008, (0, 0, 0, 50))


def skirt(p: Pen) -> None:
    p.body([(0.22, 0.06), (0.78, 0.06), (0.98, 1.0), (0.02, 1.0)])
    p.part_rect((0.21, 0.0, 0.79, 0.08), p.shade(0.75))
    k = 10
    for i in range(1, k):
        p.line([(0.22 + 0.56 * i / k, 0.08), (0.02 + 0.96 * i / k, 1.0)], 0.007)


# ---- beauty -----------------------------------------------------------------------------


def fragrance(p: Pen) -> None:
    cap_rgb = DARK if sum(p.colour) < 200 else GOLD
    p.body_rect((0.05, 0.3, 0.95, 1.0), 0.08)
    p.part_rect((0.38, 0.22, 0.62, 0.31), GOLD)
    p.part_rect((0.3, 0.0, 0.7, 0.23), cap_rgb, 0.03)
    p.line([(0.2, 0.36), (0.2, 0.94)], 0.05, SHINE)
    p.outline((0.25, 0.55, 0.75, 0.72), 0.012, 0.0, (255, 255, 255, 120))


def lipstick(p: Pen) -> None:
    p.body([(0.2, 0.42), (0.8, 0.42), (0.8, 0.12), (0.2, 0.0)])
    p.part_rect((0.12, 0.4, 0.88, 0.5), GOLD)
    gold = "gold_case" in p.flags
    p.part_rect((0.04, 0.5, 0.96, 1.0), GOLD if gold else DARK, 0.06)
    p.part_rect((0.04, 0.56, 0.96, 0.6), DARK if gold else GOLD)


#: shape key -> (bounding box aspect ratio width/height, drawing function)
SHAPES: dict[str, tuple[float, Callable[[Pen], None]]] = {
    "tote": (1.05, tote),
    "lola": (1.0, lola),
    "crossbody": (1.0, crossbody),
    "backpack": (0.78, backpack),
    "card_case": (1.5, card_case),
    "wallet": (1.9, wallet),
    "sneakers": (2.3, sneakers),
    "boots": (0.85, boots),
    "sunglasses_cateye": (2.7, sunglasses_cateye),
    "sunglasses_square": (2.7, sunglasses_square),
    "sunglasses_round": (2.7, sunglasses_round),
    "belt": (3.6, belt),
    "cap": (1.5, cap),
    "scarf": (0.42, scarf),
    "trench_long": (0.5, trench_long),
    "trench_short": (0.7, trench_short),
    "puffer": (0.85, puffer),
    "tshirt": (1.05, tshirt),
    "shirt": (0.82, shirt),
    "sweater": (1.0, sweater),
    "dress": (0.55, dress),
    "skirt": (0.95, skirt),
    "fragrance": (0.62, fragrance),
    "lipstick": (0.3, lipstick),
}
