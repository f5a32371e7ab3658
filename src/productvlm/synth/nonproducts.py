"""Pictures that are not products: what a confidence score must tell apart from real photos.

Four kinds, as users send them by mistake: plain colours (a blank upload), noise (a broken
camera, a corrupt file that still decodes), photos of text (a receipt, a label) and landscapes
(a holiday photo), the landscapes drawn with the catalog's own :class:`~productvlm.synth.pen.Pen`
so they share its rendering, not its subjects.

>>> pictures = non_products(n=8, seed=0)  # doctest: +SKIP
>>> sorted({kind for kind, _ in pictures})  # doctest: +SKIP
['landscape', 'noise', 'plain', 'text']
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from productvlm.synth.pen import Pen

KINDS = ("plain", "noise", "text", "landscape")
_WORDS = ("total", "receipt", "invoice", "thank you", "item", "qty", "price", "card", "visa",
          "change", "store", "order", "date", "ref", "vat", "subtotal")


def non_products(n: int = 40, seed: int = 0, size: tuple[int, int] = (480, 600)
                 ) -> list[tuple[str, Image.Image]]:
    """``n`` (kind, RGB picture) pairs, the kinds in turn, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    makers = {"plain": _plain, "noise": _noise, "text": _text, "landscape": _landscape}
    return [(KINDS[i % 4], makers[KINDS[i % 4]](rng, size)) for i in range(n)]


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
