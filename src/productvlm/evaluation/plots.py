"""The figures of an evaluation (price scatter, error histogram) and image helpers shared by
report.html and the W&B logs.

>>> fig = price_scatter(rows)  # doctest: +SKIP
>>> data_uri(png(fig))[:22]  # doctest: +SKIP
'data:image/png;base64,'
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from productvlm.errors import ProductVLMError
from productvlm.evaluation.rows import PredictionRow
from productvlm.images import open_image


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # Figure() renders with Agg
    return buf.getvalue()


def _readable_prices(rows: Sequence[PredictionRow]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (r.truth.price, price)
        for r in rows
        if (price := r.prediction.price) is not None and math.isfinite(price) and price > 0
    ]
    arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def price_scatter(rows: Sequence[PredictionRow]) -> Figure:
    """Predicted against true price on log-log axes, with y = x and a ±25 % band."""
    true, pred = _readable_prices(rows)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    if len(true):
        lo, hi = min(true.min(), pred.min()) / 1.3, max(true.max(), pred.max()) * 1.3
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(
            line, line * 0.75, line * 1.25, color="#2a9d8f", alpha=0.12, label="within 25%"
        )
        ax.plot(line, line, color="#264653", lw=1, label="predicted = true")
        ax.scatter(true, pred, s=14, alpha=0.6, color="#e76f51", edgecolors="none")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(loc="upper left", frameon=False, fontsize=8)
    n_missing = len(rows) - len(true)
    ax.set_title(
        f"Price: predicted vs true (n={len(true)}"
        + (f", {n_missing} unreadable not shown)" if n_missing else ")"),
        fontsize=10,
    )
    ax.set_xlabel("true price")
    ax.set_ylabel("predicted price")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def error_histogram(rows: Sequence[PredictionRow]) -> Figure:
    """Signed price error (predicted − true) / true in %, clipped to [−100 %, +300 %]."""
    true, pred = _readable_prices(rows)
    err = np.clip(100 * (pred - true) / true, -100, 300) if len(true) else np.zeros(0)
    # the axis follows the data (a good model's errors would vanish in a +-300 % axis)
    hi = float(np.clip(np.abs(err).max() * 1.1 if len(err) else 50, 30, 300))
    step = 5 if hi <= 100 else 10
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    ax.axvspan(-25, 25, color="#2a9d8f", alpha=0.12, label="within 25%")
    ax.axvline(0, color="#264653", lw=1)
    ax.hist(
        err,
        bins=np.arange(-min(hi, 100) - step, hi + step, step),
        color="#e76f51",
        edgecolor="white",
    )
    ax.set_xlim(-min(hi, 100) - step, hi + step)
    ax.set_title(f"Price error, % (n={len(err)}, clipped to -100 .. +300)", fontsize=10)
    ax.set_xlabel("(predicted − true) / true, %")
    ax.set_ylabel("rows")
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def image_or_none(image: Any) -> Image.Image | None:
    """A row's image as PIL, or None where it is missing or broken: a report must not fail."""
    if image is None or isinstance(image, Image.Image):
        return image
    try:
        return open_image(image)
    except ProductVLMError:
        return None


def thumbnail(image: Any, size: int = 168) -> str | None:
    img = image_or_none(image)
    if img is None:
        return None
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return data_uri(buf.getvalue(), "image/jpeg")
