"""Pictures that are not products: what a confidence score must tell apart from real photos.

Six kinds, as users send them by mistake: plain colours (a blank upload), noise (a broken
camera, a corrupt file that still decodes), photos of text (a receipt, an invoice), landscapes
(a holiday photo), screenshots (a web page or an app) and people (a portrait), the landscapes
and people drawn with the catalog's own :class:`~productvlm.synth.pen.Pen` so they share its
rendering, not its subjects.

>>> pictures = non_products(n=12, seed=0)  # doctest: +SKIP
>>> sorted({kind for kind, _ in pictures})  # doctest: +SKIP
['landscape', 'noise', 'person', 'plain', 'screenshot', 'text']
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from productvlm.synth.pen import Pen

KINDS = ("plain", "noise", "text", "landscape", "screenshot", "person")
_WORDS = ("total", "receipt", "invoice", "thank you", "item", "qty", "price", "card", "visa",
          "change", "store", "order", "date", "ref", "vat", "subtotal")


def non_products(n: int = 40, seed: int = 0, size: tuple[int, int] = (480, 600)
                 ) -> list[tuple[str, Image.Image]]:
    """``n`` (kind, RGB picture) pairs, the kinds in turn, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    makers = {"plain": _plain, "noise": _noise, "text": _text, "landscape": _landscape,
              "screenshot": _screenshot, "person": _person}
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    return [(k, makers[k](rng, size)) for k in kinds]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _plain(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, _colour(rng))


def _noise(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    if rng.random() < 0.5:  # sensor noise around a grey level
        arr = rng.normal(rng.integers(60, 200), 40, (h, w, 3))
    else:  # coloured static
        arr = rng.integers(0, 256, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _text(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", size, paper)  # type: ignore[arg-type]
    d = ImageDraw.Draw(img)
    y = int(h * 0.05)
    while y < h * 0.92:
        words = rng.choice(_WORDS, size=int(rng.integers(1, 5)))
        line = " ".join(words).upper() if rng.random() < 0.3 else " ".join(words)
        line += f"  {rng.integers(1, 999)}.{rng.integers(0, 99):02d}"
        d.text((int(w * 0.08), y), line, fill=(30, 30, 30))
        y += int(rng.integers(14, 26))
    return img.rotate(float(rng.normal(0, 2)), fillcolor=paper, resample=Image.BICUBIC)


def _landscape(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    top, bottom = np.array(_colour(rng)) // 2 + 100, np.array([235, 235, 245])
    t = np.linspace(0, 1, h)[:, None, None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    img = Image.fromarray(sky.astype(np.uint8), "RGB")
    for layer in range(3):  # ridges, further ones paler
        base = 0.45 + 0.15 * layer
        xs = np.linspace(0, 1, 9)
        ys = base + rng.normal(0, 0.06, len(xs))
        pen = Pen(w, h, colour=tuple(int(v) for v in rng.integers(40, 140, 3)))
        pen.body([(0.0, 1.0), *zip(xs.tolist(), ys.tolist(), strict=True), (1.0, 1.0)])
        mask, overlay = pen.finish()
        shade = Image.new("RGB", size, pen.shade(0.6 + 0.15 * (2 - layer)))
        img.paste(shade, (0, 0), mask)
        img.paste(overlay, (0, 0), overlay)
    sun = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.3)
    ImageDraw.Draw(img).ellipse((sun[0] * w - 25, sun[1] * h - 25, sun[0] * w + 25,
                                 sun[1] * h + 25), fill=(250, 230, 150))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _lines(d: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int],
           ink: tuple[int, int, int]) -> None:
    """Lines of words filling ``box``, as a page or a panel of an app holds them."""
    x0, y0, x1, y1 = box
    y = y0
    while y < y1 - 12:
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 6))))
        d.text((x0, y), line[: max(4, (x1 - x0) // 6)], fill=ink)
        y += int(rng.integers(13, 20))


def _screenshot(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A web page or app: a coloured bar, a side panel, text, buttons and image tiles."""
    w, h = size
    dark = rng.random() < 0.3
    page = (32, 34, 40) if dark else tuple(int(v) for v in rng.integers(240, 256, 3))
    ink = (220, 220, 225) if dark else (40, 40, 48)
    img = Image.new("RGB", size, page)  # type: ignore[arg-type]
    d = ImageDraw.Draw(img)
    bar = int(h * rng.uniform(0.06, 0.12))
    d.rectangle((0, 0, w, bar), fill=_colour(rng))
    d.text((12, bar // 3), "store  search  account  cart", fill=(255, 255, 255))
    side = int(w * rng.uniform(0.2, 0.32)) if rng.random() < 0.7 else 0
    if side:
        d.rectangle((0, bar, side, h), fill=tuple(max(0, c - 12) for c in page))
        _lines(d, rng, (10, bar + 10, side - 6, h), ink)
    x = side + 14
    y = bar + 14
    for _ in range(int(rng.integers(2, 5))):
        tile = int(rng.integers(40, 90))
        d.rectangle((x, y, x + tile, y + tile), fill=_colour(rng))
        _lines(d, rng, (x + tile + 10, y, w - 10, y + tile), ink)
        d.rounded_rectangle((w - 90, y + tile - 24, w - 14, y + tile), 6, fill=_colour(rng))
        y += tile + 22
    _lines(d, rng, (x, y, w - 10, h), ink)
    return img


def _person(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A portrait: a face, hair, shoulders in a top, in front of a room or the outdoors."""
    w, h = size
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    t = np.linspace(0, 1, h)[:, None, None]
    scene = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    img = Image.fromarray(scene.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # things in the room or the street behind
        x, y = rng.uniform(0, w), rng.uniform(0, h * 0.7)
        d.rectangle((x, y, x + rng.uniform(20, 160), y + rng.uniform(20, 200)), fill=_colour(rng))
    img = img.filter(ImageFilter.GaussianBlur(6))  # the background out of focus
    skin = tuple(int(v) for v in rng.choice(
        [(241, 204, 177), (224, 172, 138), (198, 134, 96), (141, 85, 54), (92, 58, 40)]))
    cx, scale = w * rng.uniform(0.35, 0.65), rng.uniform(0.8, 1.2)
    head_w, head_h = 0.34 * w * scale, 0.3 * h * scale
    head_y = h * rng.uniform(0.18, 0.3)
    shoulders = Pen(w, h, colour=_colour(rng))
    sy = (head_y + head_h * 0.95) / h
    shoulders.body([(cx / w - 0.45, 1.0), (cx / w - 0.4, sy + 0.12), (cx / w - 0.12, sy),
                    (cx / w + 0.12, sy), (cx / w + 0.4, sy + 0.12), (cx / w + 0.45, 1.0)])
    mask, overlay = shoulders.finish()
    img.paste(Image.new("RGB", size, shoulders.shade(0.8)), (0, 0), mask)
    img.paste(overlay, (0, 0), overlay)
    d = ImageDraw.Draw(img)
    d.rectangle((cx - head_w * 0.18, head_y + head_h * 0.8, cx + head_w * 0.18, sy * h + 8),
                fill=skin)  # the neck
    hair = tuple(int(v) for v in rng.integers(10, 120, 3))
    d.ellipse((cx - head_w * 0.56, head_y - head_h * 0.58, cx + head_w * 0.56,
               head_y + head_h * 0.45), fill=hair)
    d.ellipse((cx - head_w / 2, head_y - head_h / 2, cx + head_w / 2, head_y + head_h / 2),
              fill=skin)
    for side in (-1, 1):  # eyes and brows
        ex, ey = cx + side * head_w * 0.2, head_y - head_h * 0.05
        d.ellipse((ex - 9, ey - 5, ex + 9, ey + 5), fill=(250, 250, 250))
        d.ellipse((ex - 4, ey - 4, ex + 4, ey + 4), fill=(40, 30, 25))
        d.line((ex - 12, ey - 14, ex + 12, ey - 16), fill=hair, width=4)
    d.arc((cx - head_w * 0.18, head_y + head_h * 0.08, cx + head_w * 0.18,
           head_y + head_h * 0.3), 20, 160, fill=(150, 60, 60), width=4)
    return img.filter(ImageFilter.GaussianBlur(0.5))
