"""The :class:`Calibration` record and how it reads one answer: the category probability
(LDA on the image features, with a temperature), the typicality gate and the confidence; its
price side is :mod:`.intervals`, its fitting :mod:`.fitting`, its folder :mod:`.storing`.

>>> cal = Calibration.load(Path("runs/demo/train/calibration"))  # doctest: +SKIP
>>> cal.uncertainty(signals, "BAGS", 0.8).confidence  # doctest: +SKIP
0.91
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from productvlm.calibration.fitting import Fitted
from productvlm.calibration.intervals import PriceIntervals
from productvlm.calibration.signals import Signals, Uncertainty
from productvlm.calibration.storing import Stored
from productvlm.wordprice import WordPrice

TYPICAL_TAIL = 0.05  # photos stranger than all but this share of validation ones lose confidence


@dataclass
class Calibration(PriceIntervals, Stored, Fitted):
    """Fitted on a validation split; see :mod:`productvlm.calibration`. Saved as
    ``calibration/``."""

    grid: list[float]  # candidate prices, ascending
    margins: dict[float, float]  # level -> CQR margin Q (log price, before weighting)
    categories: list[str]
    temperature: float
    confidence_coef: list[float]  # logistic weights over (logit p_cat, answer log-prob)
    confidence_intercept: float
    arrays: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    doubt_weight: float = 0.0  # lambda: how much the margin grows with category doubt
    given_margins: dict[float, float] = field(default_factory=dict)  # level -> Q, given listing
    #: the listing's words as a price model (wordprice.py), fitted on the training split
    words: WordPrice | None = None

    # -- applying ------------------------------------------------------------------------
    def category_logits(self, features: np.ndarray) -> np.ndarray:
        """LDA logits (categories x) of pooled features (n x D), temperature applied."""
        return -0.5 * self._distances(features) / self.temperature

    def category_probs(self, features: np.ndarray) -> np.ndarray:
        z = self.category_logits(features)
        z -= z.max(-1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(-1, keepdims=True)

    def typicality(self, features: np.ndarray, photos: np.ndarray | None = None) -> np.ndarray:
        """1 for photos as typical as most validation photos, towards 0 for strange ones.

        Two gates, the lower one counts: the smallest Mahalanobis distance of the image
        features to a category mean, and (where ``photos`` are given and the calibration has
        them) the Mahalanobis distance of the picture's layout statistics
        (:mod:`productvlm.photostats`) to the training photos'. The features' gate: the share
        of validation photos at least as far (a conformal p-value), over :data:`TYPICAL_TAIL`,
        capped at 1, and past the farthest validation photo decaying exponentially with the
        excess. The layout's gate only decays past the farthest validation photo: a product
        photo's layout varies little, a non-product's lies far beyond (docs/calibration.md).
        """
        gate = typicality_gate(self._distances(features).min(-1),
                               self.arrays["validation_d2"])
        if photos is not None and "photo_precision" in self.arrays:
            gate = np.minimum(gate, typicality_gate(self._photo_distances(photos),
                                                    self.arrays["validation_photo_d2"],
                                                    tail=None))
        return gate

    def _photo_distances(self, photos: np.ndarray) -> np.ndarray:
        diff = np.asarray(photos, dtype=np.float64).reshape(-1, self.arrays["photo_mean"].size)
        diff = diff - self.arrays["photo_mean"]
        return np.einsum("nd,de,ne->n", diff, self.arrays["photo_precision"], diff)

    def uncertainty(self, signals: Signals, category: str | None, level: float) -> Uncertainty:
        """The calibrated reading of one answer whose category is ``category``."""
        out = Uncertainty(interval_level=level)
        lp, grid = signals.price_logprobs, self.log_grid
        if signals.features is None:
            return out
        feats = signals.features[None, :].astype(np.float64)
        probs = self.category_probs(feats)[0]
        p_cat = (float(probs[self.categories.index(category)])
                 if category in self.categories else 0.0)
        out.category_prob = round(p_cat, 4)
        if lp is not None and len(lp) == len(grid):
            low, high = self.interval(lp, level, p_cat)
            out.price_low, out.price_high = round(low, 2), round(high, 2)
        typical = float(self.typicality(feats, signals.photo)[0])
        out.typicality = round(typical, 4)
        if signals.answer_logprob is not None:
            x = self._confidence_features(p_cat, signals.answer_logprob)
            z = float(np.dot(self.confidence_coef, x)) + self.confidence_intercept
            out.confidence = round(typical / (1 + math.exp(-z)), 4)
        return out

    @staticmethod
    def _confidence_features(p_cat: float, answer_lp: float) -> np.ndarray:
        p = min(max(p_cat, 1e-6), 1 - 1e-6)
        return np.array([math.log(p / (1 - p)), answer_lp])

    def _distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (n x categories) in the PCA space."""
        a = self.arrays
        z = (np.asarray(features, dtype=np.float64) - a["pca_mean"]) @ a["pca_components"].T
        diff = z[:, None, :] - a["class_means"][None, :, :]
        return np.einsum("nkd,de,nke->nk", diff, a["precision"], diff)


def typicality_gate(d2: np.ndarray, ref: np.ndarray,
                    tail: float | None = TYPICAL_TAIL) -> np.ndarray:
    """A typicality gate from squared distances ``d2`` and the validation photos' ``ref``:
    the conformal p-value over ``tail`` (capped at 1; None: 1 up to the farthest validation
    photo), decaying exponentially past the farthest validation photo."""
    far, mid = float(ref.max()), float(np.median(ref))
    decay = np.exp(-np.clip(d2 - far, 0, None) / max(far - mid, 1e-6))
    if tail is None:
        return decay
    p = (1 + (ref[None, :] >= d2[:, None]).sum(-1)) / (len(ref) + 1)
    return np.minimum(1.0, p * decay / tail)
