"""How well the model knows what it knows, on an evaluated split: interval coverage against
the stated level (50-95%), interval width, and reliability of the category probability and
the confidence (expected calibration error, ECE, with its diagram).

>>> figures = uncertainty_figures(rows, calibration, level=0.8)  # doctest: +SKIP
>>> figures["metrics"]["price_interval_coverage"]  # doctest: +SKIP
0.83
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from productvlm.calibration import USABLE_APE, Calibration
from productvlm.evaluation.rows import PredictionRow

NOMINAL = tuple(round(x, 2) for x in np.arange(0.50, 0.951, 0.05))
BINS = 10


def reliability(prob: Sequence[float], hit: Sequence[bool], bins: int = BINS) -> dict[str, Any]:
    """Equal-width bins of stated probability: mean stated, observed rate, count; and the ECE
    (the count-weighted gap between stated and observed).

    >>> reliability([0.9, 0.9, 0.1], [True, False, False])["ece"]
    0.3
    """
    p, y = np.asarray(prob, dtype=float), np.asarray(hit, dtype=float)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            table.append({"stated": float(p[m].mean()), "observed": float(y[m].mean()),
                          "n": int(m.sum())})
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return {"bins": table, "ece": round(float(ece), 4)}


def uncertainty_figures(rows: Sequence[PredictionRow], calibration: Calibration | None,
                        level: float) -> dict[str, Any]:
    """Metrics (flat, for metrics.json and W&B) and curves (for the plots) of a split."""
    with_interval = [r for r in rows if r.prediction.price_low is not None]
    if calibration is None or not with_interval:
        return {"metrics": {}, "curves": {}}
    truth = np.array([r.truth.price for r in with_interval])
    low = np.array([r.prediction.price_low for r in with_interval])
    high = np.array([r.prediction.price_high for r in with_interval])
    coverage_curve = []
    for nominal in NOMINAL:
        inside = []
        for r in with_interval:
            sig, pred = r.prediction.signals, r.prediction
            lo, hi = calibration.interval(sig.price_logprobs, nominal, pred.category_prob or 0.0)
            inside.append(lo <= r.truth.price <= hi)
        coverage_curve.append({"nominal": nominal, "coverage": float(np.mean(inside))})
    cat_ok = [r.prediction.category == r.truth.category for r in rows
              if r.prediction.category_prob is not None]
    cat_p = [r.prediction.category_prob for r in rows if r.prediction.category_prob is not None]
    usable = [r.prediction.category == r.truth.category and r.prediction.price is not None
              and abs(r.prediction.price / r.truth.price - 1) <= USABLE_APE
              for r in rows if r.prediction.confidence is not None]
    conf = [r.prediction.confidence for r in rows if r.prediction.confidence is not None]
    category, confidence = reliability(cat_p, cat_ok), reliability(conf, usable)
    metrics = {
        "price_interval_level": level,
        "price_interval_coverage": float(np.mean((low <= truth) & (truth <= high))),
        "price_interval_width": float(np.median((high - low) / truth)),
        "category_ece": category["ece"],
        "confidence_ece": confidence["ece"],
    }
    return {"metrics": metrics, "curves": {"coverage": coverage_curve, "category": category,
                                           "confidence": confidence}}


def calibration_figure(curves: dict[str, Any]) -> Figure:
    """Coverage against the stated level, and the two reliability diagrams, side by side."""
    fig = Figure(figsize=(12, 3.9))
    axes = fig.subplots(1, 3)
    cov = curves.get("coverage", [])
    ax = axes[0]
    ax.plot([0.45, 1], [0.45, 1], color="#264653", lw=1, label="coverage = level")
    ax.plot([c["nominal"] for c in cov], [c["coverage"] for c in cov], "o-", color="#e76f51",
            label="price interval")
    ax.set(xlabel="stated level", ylabel="share of true prices inside", xlim=(0.45, 1),
           ylim=(0.3, 1.02), title="Price interval coverage")
    for ax, key, what in ((axes[1], "category", "category right"),
                          (axes[2], "confidence", "category right, price within 25%")):
        bins = curves.get(key, {}).get("bins", [])
        ax.plot([0, 1], [0, 1], color="#264653", lw=1)
        ax.scatter([b["stated"] for b in bins], [b["observed"] for b in bins],
                   s=[12 + 4 * b["n"] for b in bins], color="#2a9d8f", alpha=0.8)
        ece = curves.get(key, {}).get("ece")
        ax.set(xlabel=f"stated {key.replace('category', 'category probability')}",
               ylabel=f"observed: {what}", xlim=(0, 1.02), ylim=(0, 1.02),
               title=f"Reliability of the {key}" + (f" (ECE {ece:.3f})" if ece is not None
                                                     else ""))
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
