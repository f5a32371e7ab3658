"""Procedural product photos: a silhouette (``shapes.py``) filled with a material texture,
shaded and dropped onto a light studio background with a soft shadow. Pure PIL + numpy.

>>> img = render(RenderSpec("tote", "check", (205, 180, 140), 0.6, 480, 600, seed=1))
>>> img.size
(480, 600)

Everything random comes from ``RenderSpec.seed``, so a spec always renders to the same
pixels (and, with the same libjpeg, the same JPEG bytes), whatever process renders it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from productvlm.synth.shapes import SHAPES, Pen

RGB = tuple[int, int, int]

#: Largest photo side that gets grain (the noise tile's size); the CLI caps sizes to it.
GRAIN_SIDE = 1280

#: Texture keys a finish can use; see :func:`texture`.
TEXTURES = ("plain", "leather", "check", "quilted", "monogram", "alligator", "silk",
            "argyle", "knit", "nylon", "glass", "stripe")


@dataclass(frozen=True)
class RenderSpec:
    """What one product photo shows. ``scale``: share of the frame the product's box fills."""

    shape: str
    texture: str
    colour: RGB
    scale: float
    width: int
    height: int
    seed: int
    flags: tuple[str, ...] = field(default=())


@cache
def _grain(size: int = 256) -> np.ndarray:
    # One fixed noise tile, reused with random offsets: photo grain at almost no cost.
    return np.random.default_rng(12345).normal(0.0, 1.0, (size, size)).astype(np.float32)


def _tile(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    g = _grain()
    oy, ox = rng.integers(0, g.shape[0], 2)
    g = np.roll(g, (int(oy), int(ox)), axis=(0, 1))
    reps = (-(-h // g.shape[0]), -(-w // g.shape[1]))
    return np.tile(g, reps)[:h, :w]


def _lines(n: int, period: float, spec: list[tuple[float, float]], phase: float) -> np.ndarray:
    """1-D stripe profile: 1 where (i + phase) mod period falls in one of the [a, b) fractions."""
    t = ((np.arange(n) + phase) % period) / period
    out = np.zeros(n, np.float32)
    for a, b in spec:
        out[(t >= a) & (t < b)] = 1.0
    return out


def texture(kind: str, colour: RGB, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) float32 image of a material in ``colour``; patterns scale with ``w``.

    Periods are tied to the product's width (a check has about five repeats across), so
    a pattern stays visible when the photo is shrunk to 112 px.
    """
    c = np.asarray(colour, np.float32)
    img = np.broadcast_to(c, (h, w, 3)).copy()
    dark = c * 0.35
    light = c + (255 - c) * 0.65
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    phase = float(rng.uniform(0, 1000))
    grain_amp = 3.0
    if kind == "check":
        period = w / rng.uniform(4.0, 5.5)
        bands = [(0.0, 0.22)]
        v, hz = _lines(w, period, bands, phase), _lines(h, period, bands, phase)
        img *= (1 - 0.42 * v)[None, :, None] * (1 - 0.42 * hz)[:, None, None]
        for frac, col in (((0.5, 0.54), light), ((0.76, 0.785), np.array([170, 30, 36.0]))):
            if colour[0] > 120 and colour[1] < 60:  # a red base gets a beige accent line
                col = np.array([214, 190, 150.0]) if frac[0] > 0.7 else col
            m = np.maximum(_lines(w, period, [frac], phase)[None, :],
                           _lines(h, period, [frac], phase)[:, None])
            img += (col - img) * (0.85 * m)[..., None]
    elif kind == "quilted":
        period = w / 6.0
        d1 = (xx + yy + phase) % period
        d2 = (xx - yy + phase + 10 * period) % period
        puff = np.cos(2 * np.pi * d1 / period) * np.cos(2 * np.pi * d2 / period)
        img *= (1 + 0.1 * puff)[..., None]
        seam = (d1 < period * 0.05) | (d2 < period * 0.05)
        img[seam] *= 0.55
    elif kind == "monogram":
        period = w / 7.0
        dx = (xx + phase) % period - period / 2
        dy = (yy + phase) % period - period / 2
        ring = np.abs(np.sqrt(dx * dx + dy * dy) - period * 0.22) < period * 0.06
        ex = (xx + phase + period / 2) % period - period / 2
        ey = (yy + phase + period / 2) % period - period / 2
        diamond = (np.abs(ex) + np.abs(ey)) < period * 0.13
        motif = light if sum(colour) < 500 else dark
        img[ring | diamond] = motif
    elif kind == "alligator":
        rows = 10
        rh = h / rows
        r = (yy // rh).astype(np.int64)
        shift = (r * 37.0) % 23 * (w / 60)
        tw = w / 6 * (1 + 0.25 * np.sin(r * 1.7))
        col_i = ((xx + shift) // tw).astype(np.int64)
        tone = 0.8 + 0.2 * np.sin(r * 12.9898 + col_i * 78.233) ** 2
        grout = ((yy % rh) < rh * 0.1) | (((xx + shift) % tw) < tw * 0.06)
        img *= np.where(grout, 0.45, tone)[..., None]
        grain_amp = 5.0
    elif kind in ("silk", "nylon", "glass"):
        period = w / (1.2 if kind == "silk" else 2.0)
        sheen = np.sin(2 * np.pi * (xx * 0.7 + yy + phase) / period)
        amp = 0.22 if kind == "silk" else 0.12
        img *= (1 + amp * sheen)[..., None]
        if kind == "glass":
            img = img * 0.55 + 255 * 0.45
    elif kind == "argyle":
        period = w / 3.0
        dx = np.abs((xx + period / 2) % period - period / 2) / (period / 2)
        dy = np.abs((yy + period * 0.75) % (period * 1.5) - period * 0.75) / (period * 0.75)
        inside = (dx + dy) < 1.0
        img[inside] = light * 0.6 + c * 0.4
        diag = (np.abs((xx + yy * 0.667) % period) < period * 0.03) | (
            np.abs((xx - yy * 0.667 + 50 * period) % period) < period * 0.03)
        img[diag] = dark
    elif kind == "stripe":  # pinstripes: light bands about ten to a product's width
        period = w / 10.0
        img[:, _lines(w, period, [(0.0, 0.28)], phase) > 0] = light
    elif kind == "knit":
        period = max(w / 45.0, 3.0)
        img *= (1 + 0.07 * np.sin(2 * np.pi * (xx + phase) / period))[..., None]
        grain_amp = 5.0
    elif kind == "leather":
        grain_amp = 4.0
    elif kind != "plain":
        raise ValueError(f"unknown texture {kind!r}; known: {', '.join(TEXTURES)}")
    img += _tile(h, w, rng)[..., None] * grain_amp
    return img


def _lighting(h: int, w: int, glossy: bool) -> np.ndarray:
    """Soft studio light: brighter centre-left, darker edges, a highlight on glossy goods."""
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    v = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    light = 1.04 - 0.14 * (u + 0.15) ** 2 - 0.05 * v
    if glossy:
        light = light + 0.22 * np.exp(-((u + 0.35) ** 2) / 0.05 - ((v + 0.35) ** 2) / 0.12)
    return light


_SHADOW_LUT = [round(a * 0.28) for a in range(256)]

#: Longest side the photo is composed at; bigger photos are upscaled once at the end (a
#: slightly soft photo, and four times less work than composing at 1000 px).
WORK_SIDE = 480


def render(spec: RenderSpec) -> Image.Image:
    """Draw one product photo (RGB) for ``spec``.

    >>> render(RenderSpec("belt", "leather", (36, 34, 34), 0.8, 600, 800, seed=7)).mode
    'RGB'
    """
    rng = np.random.default_rng(spec.seed)
    k = min(1.0, WORK_SIDE / max(spec.width, spec.height))
    W, H = max(16, round(spec.width * k)), max(16, round(spec.height * k))
    aspect, draw = SHAPES[spec.shape]

    # light studio background: warm or cool off-white, a little darker towards the floor
    top = rng.integers(238, 253)
    tint = rng.integers(-4, 5, 3)
    c_top = tuple(int(np.clip(top + t, 0, 255)) for t in tint)
    drop = int(rng.integers(6, 16))
    c_bot = tuple(max(0, c - drop) for c in c_top)
    column = np.linspace(c_top, c_bot, H, dtype=np.float32).round().astype(np.uint8)
    canvas = Image.fromarray(column[:, None, :], "RGB").resize((W, H), Image.Resampling.NEAREST)

    # product box: fit ``scale`` of the frame, keep the shape's aspect, sit slightly low
    bw, bh = W * spec.scale, H * spec.scale
    ow = max(8, int(min(bw, bh * aspect)))
    oh = max(8, int(ow / aspect))
    cx = W / 2 + rng.uniform(-0.03, 0.03) * W
    cy = H * 0.52 + rng.uniform(-0.03, 0.03) * H
    ox = int(np.clip(cx - ow / 2, 0, W - ow))
    oy = int(np.clip(cy - oh / 2, 0, H - oh))

    pen = Pen(ow, oh, spec.colour, spec.flags)
    draw(pen)
    mask, over = pen.finish()

    tex = texture(spec.texture, spec.colour, ow, oh, rng)
    tex *= _lighting(oh, ow, spec.texture in ("leather", "alligator", "nylon", "glass"))[..., None]
    obj = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8), "RGB")
    obj.paste(over, (0, 0), over)

    # soft contact shadow: the silhouette, blurred at low resolution, offset down-right
    f = 4 if min(ow, oh) >= 32 else 1
    blur = mask.reduce(f).filter(ImageFilter.GaussianBlur(2)).resize(
        (ow, oh), Image.Resampling.BILINEAR)
    shadow = blur.point(_SHADOW_LUT)
    sx = min(W - ow, ox + int(ow * 0.02))
    sy = min(H - oh, oy + int(oh * 0.03))
    canvas.paste(tuple(int(c * 0.6) for c in c_bot), (sx, sy, sx + ow, sy + oh), shadow)
    canvas.paste(obj, (ox, oy), mask)

    # grain before the upscale: a quarter of the work, and it still reads as photo noise
    canvas = _add_grain(canvas, rng)
    if (spec.width, spec.height) != (W, H):
        canvas = canvas.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    return canvas


@cache
def _grain_image(side: int = GRAIN_SIDE) -> Image.Image:
    # fixed sensor-like noise around 8 (0..16); ImageChops.add subtracts the 8 back
    noise = np.random.default_rng(2024).normal(8.0, 4.0, (side, side, 3))
    return Image.fromarray(np.clip(noise, 0, 16).astype(np.uint8), "RGB")


def _add_grain(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Photo grain from a fixed noise tile at a random offset (also keeps JPEGs realistic
    in size: flat synthetic colour would compress to a few KB)."""
    g = _grain_image()
    w, h = img.size
    if w > g.width or h > g.height:
        return img
    x = int(rng.integers(0, g.width - w + 1))
    y = int(rng.integers(0, g.height - h + 1))
    return ImageChops.add(img, g.crop((x, y, x + w, y + h)), scale=1.0, offset=-8)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    """Encode as a baseline JPEG (4:2:0, no EXIF), like a product image CDN serves."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=False)
    return buf.getvalue()
