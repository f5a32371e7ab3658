"""A picture's layout statistics: what makes a product photo look like one, whatever the model
learned. Half of the typicality gate (productvlm.calibration): the model's own image features
tell a new kind of product from the known ones, but a small or young model can place a page
of text or a screenshot among the products; these statistics cannot.

A catalog photo is one object on a plain background: a uniform border, a compact foreground
near the middle, a few long edges. A blank upload has no foreground, noise has edges
everywhere, a document or screenshot has many small edges spread over the whole frame, a
holiday photo or a portrait has no plain border. The calibration fits their distribution on
the training photos (a shrunk covariance) and measures each picture's distance to it
against the validation photos' distances (a conformal p-value), as it does for the features.

>>> photo_stats(Image.new("RGB", (640, 800), "white")).shape
(14,)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 64  # the statistics are read on a SIDE x SIDE thumbnail
BORDER = 4  # pixels of the thumbnail's edge that make its border
FOREGROUND = 0.12  # a pixel this far (0-1, RGB distance) from the border colour is foreground
EDGE = 0.08  # a luminance step this large between neighbours is an edge
NAMES = ("border_std", "border_lum", "border_sat", "fg_share", "fg_box_share", "fg_fill",
         "fg_off_centre", "fg_on_border", "edge_share", "edge_share_fg", "lum_std",
         "sat_mean", "laplace", "lum_entropy")


def photo_stats(image: Image.Image) -> np.ndarray:
    """The :data:`NAMES` statistics of one picture, as float64 (each roughly 0-1 or a log).

    >>> photo_stats(Image.new("RGB", (64, 64), (200, 10, 10)))[3]  # no foreground
    0.0
    """
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR,
                                        reducing_gap=2.0)  # a box reduction first: 1 ms
    rgb = np.asarray(small, dtype=np.float64) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    hi, lo = rgb.max(-1), rgb.min(-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    edge = np.zeros((SIDE, SIDE), dtype=bool)
    edge[:, 1:] |= np.abs(np.diff(lum, axis=1)) > EDGE
    edge[1:, :] |= np.abs(np.diff(lum, axis=0)) > EDGE
    ring = np.ones((SIDE, SIDE), dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    colour = np.median(rgb[ring], axis=0)
    fg = np.linalg.norm(rgb - colour, axis=-1) > FOREGROUND
    fg_share = float(fg[~ring].mean())
    if fg.any():
        ys, xs = np.nonzero(fg)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) / SIDE**2
        off = float(np.hypot(ys.mean() - SIDE / 2, xs.mean() - SIDE / 2) / SIDE)
        edge_fg = float(edge[fg].mean())
    else:
        box, off, edge_fg = 0.0, 0.0, 0.0
    laplace = np.abs(4 * lum[1:-1, 1:-1] - lum[:-2, 1:-1] - lum[2:, 1:-1] - lum[1:-1, :-2]
                     - lum[1:-1, 2:]).mean()
    hist = np.histogram(lum, bins=32, range=(0, 1))[0] / lum.size
    entropy = float(-(hist[hist > 0] * np.log(hist[hist > 0])).sum())
    return np.array([
        float(rgb[ring].std(0).mean()), float(lum[ring].mean()), float(sat[ring].mean()),
        fg_share, float(box), fg_share / max(float(box), 1e-6), off, float(fg[ring].mean()),
        float(edge.mean()), edge_fg, float(lum.std()), float(sat.mean()),
        float(np.log(laplace + 1e-4)), entropy])


__all__ = ["NAMES", "photo_stats"]
