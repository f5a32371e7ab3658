"""Fitting a :class:`~productvlm.calibration.Calibration` on a validation split: the LDA
of the image features, the temperature, the typicality references, the conformal margins,
the confidence's logistic regression and, for audits, the listing's scores and the words'
price model (see :mod:`productvlm.calibration`).

>>> cal = Calibration.fit(grid, signals, answers, truths, feats, cats)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from productvlm.calibration.intervals import (
    LEVELS,
    band_scores,
    central_band,
    conformal_quantile,
    fit_margins,
)
from productvlm.calibration.signals import Signals
from productvlm.errors import ProductVLMError
from productvlm.wordprice import WordPrice

USABLE_APE = 0.25  # a price within 25% of the truth counts as right, for the confidence
PCA_DIMS = 64


class Fitted:
    """:meth:`fit`, mixed into :class:`~productvlm.calibration.Calibration` (it builds one
    with ``cls`` and reads it back through its methods)."""

    @classmethod
    def fit(cls, grid: Sequence[float], signals: Sequence[Signals], answers: Sequence[Any],
            truths: Sequence[Any], train_features: np.ndarray,
            train_categories: Sequence[str], train_photos: np.ndarray | None = None,
            train_listings: tuple[Sequence[str], Sequence[float]] | None = None
            ) -> Self:
        """Fit on the validation rows' signals, the answers given and the truths.

        ``answers`` and ``truths`` have ``.category`` and ``.price``; ``train_features`` are
        the pooled image features of the training photos, ``train_categories`` their labels,
        ``train_photos`` their layout statistics (for the typicality gate's second half),
        ``train_listings`` their (titles, prices), for the words' price model of audits.
        """
        from sklearn.covariance import LedoitWolf
        from sklearn.linear_model import LogisticRegression

        if len(signals) < 10:
            raise ProductVLMError(f"calibration needs at least 10 validation rows with an "
                                  f"answer; got {len(signals)}")
        grid = sorted(float(x) for x in grid)
        log_grid = np.log(grid)
        y = np.log([float(t.price) for t in truths])
        lps = [s.price_logprobs for s in signals]

        # LDA in a PCA space of the image features: class means + one shrunk covariance
        x = np.asarray(train_features, dtype=np.float64)
        labels = np.asarray(train_categories)
        cats = sorted(set(labels.tolist()))
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:min(PCA_DIMS, len(vt))]
        z = (x - mean) @ comps.T
        centers = np.stack([z[labels == c].mean(0) for c in cats])
        within = z - centers[[cats.index(c) for c in labels]]
        precision = LedoitWolf(assume_centered=True).fit(within).precision_
        arrays = {"pca_mean": mean, "pca_components": comps, "class_means": centers,
                  "precision": precision}
        cal = cls(grid=grid, margins={}, categories=cats, temperature=1.0,
                  confidence_coef=[0.0, 0.0], confidence_intercept=0.0, arrays=arrays)

        feats = np.stack([s.features for s in signals]).astype(np.float64)
        dist = cal._distances(feats)
        cal.arrays["validation_d2"] = np.sort(dist.min(-1))
        if train_photos is not None and all(s.photo is not None for s in signals):
            photos = np.asarray(train_photos, dtype=np.float64)
            cal.arrays["photo_mean"] = photos.mean(0)
            cal.arrays["photo_precision"] = LedoitWolf().fit(photos).precision_
            val = np.stack([s.photo for s in signals])
            cal.arrays["validation_photo_d2"] = np.sort(cal._photo_distances(val))
        true_idx = np.array([cats.index(t.category) if t.category in cats else -1
                             for t in truths])
        known = true_idx >= 0
        best = (math.inf, 1.0)
        for t in np.exp(np.linspace(-3, 8, 111)):  # temperature: NLL of the true categories
            logits = -0.5 * dist[known] / t
            logits -= logits.max(-1, keepdims=True)
            nll = -(logits[np.arange(known.sum()), true_idx[known]]
                    - np.log(np.exp(logits).sum(-1))).mean()
            best = min(best, (float(nll), float(t)))
        cal.temperature = best[1]

        probs = cal.category_probs(feats)
        p_ans = np.array([float(probs[i, cats.index(a.category)]) if a.category in cats else 0.0
                          for i, a in enumerate(answers)])
        cal.doubt_weight, cal.margins = fit_margins(lps, log_grid, y, p_ans)
        rows, usable = [], []
        for i, (s, a, t) in enumerate(zip(signals, answers, truths, strict=True)):
            p_cat = float(probs[i, cats.index(a.category)]) if a.category in cats else 0.0
            rows.append(cls._confidence_features(p_cat, s.answer_logprob or 0.0))
            ok_price = a.price is not None and abs(a.price / t.price - 1) <= USABLE_APE
            usable.append(bool(a.category == t.category and ok_price))
        if len(set(usable)) == 2:
            lr = LogisticRegression(C=1.0).fit(np.stack(rows), usable)
            cal.confidence_coef = [float(c) for c in lr.coef_[0]]
            cal.confidence_intercept = float(lr.intercept_[0])
        else:  # every validation answer right (or none): the rate is all there is to learn
            rate = min(max(float(np.mean(usable)), 0.01), 0.99)
            cal.confidence_intercept = math.log(rate / (1 - rate))
        given = [s.given_logprobs for s in signals]
        if all(g is not None for g in given):  # the listing's distribution (for audits)
            cal.given_margins = {lv: conformal_quantile(np.maximum(b[:, 0] - y, y - b[:, 1]), lv)
                                 for lv in LEVELS
                                 for b in [np.array([central_band(g, log_grid, lv)
                                                     for g in given])]}
            cal.given_margins = {k: v for k, v in cal.given_margins.items() if math.isfinite(v)}
            cal.arrays["photo_scores"] = band_scores(given, log_grid, y)
            cal.arrays["given_scores"] = cal.arrays["photo_scores"]
            if train_listings is not None and len(set(train_listings[1])) > 1:
                titles, prices = train_listings
                cal.words = WordPrice.fit(titles, list(train_categories), prices)
                mu = cal.words.predict([t.title for t in truths], [t.category for t in truths])
                words = np.abs(y - mu)
                cal.arrays["words_scores"] = np.sort(words)
                cal.arrays["given_scores"] = np.sort(band_scores(given, log_grid, y, sort=False)
                                                     + words)
        cal.stats = {"validation_rows": len(signals), "training_photos": len(x),
                     "doubt_weight": cal.doubt_weight,
                     "grid_size": len(grid), "usable_rate": round(float(np.mean(usable)), 4),
                     "temperature": round(cal.temperature, 4)}
        return cal

