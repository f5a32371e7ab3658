"""The drawing surface of the sample catalog's silhouettes (``shapes.py``): a :class:`Pen`
over a product's bounding box, in coordinates normalised to 0..1, plus arc and mirror helpers.

>>> p = Pen(300, 400, colour=(150, 30, 40))
>>> p.body([(0.1, 0.2), (0.9, 0.2), (0.9, 1.0), (0.1, 1.0)])  # doctest: +SKIP
>>> mask, overlay = p.finish()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

Point = tuple[float, float]
RGB = tuple[int, int, int]

GOLD: RGB = (196, 160, 84)
DARK: RGB = (36, 34, 34)
SOLE: RGB = (236, 233, 226)
LENS: RGB = (44, 44, 50)
SEAM = (0, 0, 0, 80)
SHINE = (255, 255, 255, 90)


class Pen:
    """Draws into a silhouette mask (L) and a detail overlay (RGBA) of a ``w`` x ``h`` box.

    The mask is drawn at ``ss``x and box-filtered down (anti-aliased outline); the overlay
    is drawn at 1x because supersampling an RGBA layer costs more than the rest of the
    photo. The product body colour is known so that parts can be a shade of it.
    """

    def __init__(self, w: int, h: int, colour: RGB, flags: Sequence[str] = (), ss: int = 2):
        self.w, self.h, self.ss = w, h, ss
        self.colour = colour
        self.flags = set(flags)
        self.mask = Image.new("L", (w * ss, h * ss), 0)
        self.over = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        self._m = ImageDraw.Draw(self.mask)
        self._o = ImageDraw.Draw(self.over)

    def _xy(self, pts: Sequence[Point], k: int = 1) -> list[tuple[float, float]]:
        return [(x * self.w * k, y * self.h * k) for x, y in pts]

    def _box(self, box: Sequence[float], k: int = 1) -> list[float]:
        x0, y0, x1, y1 = box
        return [x0 * self.w * k, y0 * self.h * k, x1 * self.w * k, y1 * self.h * k]

    def _px(self, width: float, k: int = 1) -> int:
        return max(1, round(width * self.w * k))

    def shade(self, k: float) -> RGB:
        """The body colour darkened (k < 1) or lightened (k > 1)."""
        if k <= 1:
            return tuple(round(c * k) for c in self.colour)  # type: ignore[return-value]
        return tuple(round(c + (255 - c) * (k - 1)) for c in self.colour)  # type: ignore[return-value]

    # silhouette (textured)
    def body(self, pts: Sequence[Point]) -> None:
        self._m.polygon(self._xy(pts, self.ss), fill=255)

    def body_ellipse(self, box: Sequence[float]) -> None:
        self._m.ellipse(self._box(box, self.ss), fill=255)

    def body_rect(self, box: Sequence[float], r: float = 0.0) -> None:
        self._m.rounded_rectangle(self._box(box, self.ss), radius=r * self.w * self.ss, fill=255)

    def body_pie(self, box: Sequence[float], start: float, end: float) -> None:
        self._m.pieslice(self._box(box, self.ss), start, end, fill=255)

    def body_line(self, pts: Sequence[Point], width: float) -> None:
        self._m.line(self._xy(pts, self.ss), fill=255, width=self._px(width, self.ss),
                     joint="curve")

    # opaque parts in a fixed colour
    def part(self, pts: Sequence[Point], rgb: RGB) -> None:
        self.body(pts)
        self._o.polygon(self._xy(pts), fill=(*rgb, 255))

    def part_ellipse(self, box: Sequence[float], rgb: RGB) -> None:
        self.body_ellipse(box)
        self._o.ellipse(self._box(box), fill=(*rgb, 255))

    def part_rect(self, box: Sequence[float], rgb: RGB, r: float = 0.0) -> None:
        self.body_rect(box, r)
        self._o.rounded_rectangle(self._box(box), radius=r * self.w, fill=(*rgb, 255))

    def part_line(self, pts: Sequence[Point], width: float, rgb: RGB) -> None:
        self.body_line(pts, width)
        self._o.line(self._xy(pts), fill=(*rgb, 255), width=self._px(width), joint="curve")

    # details on top (no change to the silhouette)
    def line(self, pts: Sequence[Point], width: float, rgba=SEAM) -> None:
        self._o.line(self._xy(pts), fill=rgba, width=self._px(width), joint="curve")

    def outline(self, box: Sequence[float], width: float, r: float = 0.0, rgba=SEAM) -> None:
        self._o.rounded_rectangle(self._box(box), radius=r * self.w, outline=rgba,
                                  width=self._px(width))

    def dot(self, x: float, y: float, r: float, rgba=SEAM) -> None:
        self._o.ellipse([(x - r) * self.w, y * self.h - r * self.w,
                         (x + r) * self.w, y * self.h + r * self.w], fill=rgba)

    def finish(self) -> tuple[Image.Image, Image.Image]:
        """Mask (anti-aliased) and overlay at the box size."""
        return (self.mask.reduce(self.ss) if self.ss > 1 else self.mask), self.over


def arc(
    cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24
) -> list[Point]:
    """Points on an ellipse arc, angles in degrees (0 = right, 90 = down)."""
    return [
        (cx + rx * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
         cy + ry * math.sin(math.radians(a0 + (a1 - a0) * i / n)))
        for i in range(n + 1)
    ]


def mirror(pts: Sequence[Point]) -> list[Point]:
    return [(1 - x, y) for x, y in pts]
