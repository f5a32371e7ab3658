"""Price intervals: the model's own central band of log price, the conformal margins around
it (CQR, weighted by the doubt about the category) and, for audits, the listing's interval,
the surprise of a listed price and the words' price (see :mod:`productvlm.calibration`).

>>> conformal_quantile(np.array([0.1, 0.2, 0.3, 0.4]), 0.5)
0.3
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from productvlm.errors import ProductVLMError

#: Levels the margin table covers (any level in between is interpolated).
LEVELS = tuple(round(x, 2) for x in np.arange(0.50, 0.995, 0.01))


def central_band(logprobs: np.ndarray, log_grid: np.ndarray, level: float) -> tuple[float, float]:
    """The model's own quantiles ``q((1-level)/2)``, ``q((1+level)/2)`` of log price."""
    p = np.exp(logprobs - logprobs.max())
    cdf = np.cumsum(p / p.sum())
    a = (1 - level) / 2
    lo = log_grid[min(int(np.searchsorted(cdf, a)), len(cdf) - 1)]
    hi = log_grid[min(int(np.searchsorted(cdf, 1 - a)), len(cdf) - 1)]
    return float(lo), float(hi)


def cents(log_price: float) -> float:
    """A log price back as a price in cents. The bounds are often grid prices themselves
    (a margin of 0): rounding makes exp(log(490)) 490.00 again, so a true price on the bound
    is inside, as the conformal score counted it."""
    return round(math.exp(log_price), 2)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n+1) level)-th smallest score (inf when n is too small for the level)."""
    n = len(scores)
    k = math.ceil((n + 1) * level)
    return float(np.sort(scores)[k - 1]) if 0 < k <= n else math.inf


class PriceIntervals:
    """The price side of a :class:`~productvlm.calibration.Calibration` (mixed into it, it
    reads its ``grid``, margins, ``doubt_weight``, ``arrays`` and ``words``): the margins
    turned into intervals, the listing's interval and surprise, the words' price."""

    @property
    def log_grid(self) -> np.ndarray:
        return np.log(np.asarray(self.grid, dtype=np.float64))

    def margin(self, level: float) -> float:
        """The CQR margin at ``level`` (interpolated between the fitted levels)."""
        if not LEVELS[0] <= level <= LEVELS[-1]:
            raise ProductVLMError(f"interval level {level}: choose one from {LEVELS[0]} to "
                                  f"{LEVELS[-1]}")
        xs = sorted(self.margins)
        return float(np.interp(level, xs, [self.margins[x] for x in xs]))

    def interval(self, logprobs: np.ndarray, level: float,
                 category_prob: float = 1.0) -> tuple[float, float]:
        """(low, high) price at ``level``, from the row's price distribution and how sure
        the category is."""
        lo, hi = central_band(logprobs, self.log_grid, level)
        q = self.margin(level) * (1 + self.doubt_weight * (1 - category_prob))
        if lo - q > hi + q:  # a negative margin may cross the band: meet in the middle
            lo = hi = (lo + hi) / 2
        else:
            lo, hi = lo - q, hi + q
        return cents(lo), cents(hi)

    def given_interval(self, logprobs: np.ndarray, level: float) -> tuple[float, float]:
        """(low, high) price at ``level`` for a product with the catalog's title and category."""
        if not self.given_margins:
            raise ProductVLMError("this calibration has no listing intervals; calibrate again "
                                  "(productvlm evaluate) to audit with it")
        lo, hi = central_band(logprobs, self.log_grid, level)
        xs = sorted(self.given_margins)
        q = float(np.interp(level, xs, [self.given_margins[x] for x in xs]))
        lo, hi = (lo - q, hi + q) if lo - q <= hi + q else ((lo + hi) / 2,) * 2
        return cents(lo), cents(hi)

    def surprise(self, logprobs: np.ndarray, listed: float,
                 words_log_price: float | None = None) -> tuple[float, float, float]:
        """(surprise, p-value, the photo's own surprise) of a listed price.

        The photo's surprise is how far ``listed`` lies outside the listing's price
        distribution's middle half, in log price (0 inside it; 0.69 is a factor of 2 beyond
        it). With the words' log price, the surprise adds the listed price's distance from it
        (the evidence of the photo and of the words, in one unit). The p-value is the share of
        validation rows whose correct price was at least as surprising, scored the same way
        (with the row itself).
        """
        lo, hi = central_band(logprobs, self.log_grid, 0.5)
        x = math.log(listed)
        photo = max(lo - x, x - hi, 0.0)
        both = words_log_price is not None and "words_scores" in self.arrays
        score = photo + abs(x - words_log_price) if both else photo
        ref = self.arrays.get("given_scores" if both else "photo_scores")
        if ref is None:
            ref = self.arrays.get("given_scores")  # a calibration from before the words
        if ref is None:
            raise ProductVLMError("this calibration has no listing scores; calibrate again")
        return score, p_value(ref, score), photo

    def photo_p_value(self, photo_surprise: float) -> float:
        """The p-value of the photo's own surprise among the validation rows'."""
        ref = self.arrays.get("photo_scores", self.arrays.get("given_scores"))
        return p_value(ref, photo_surprise)

    def words_price(self, title: str, category: str, listed: float | None = None,
                    level: float = 0.8) -> tuple[float, float, float, float | None] | None:
        """(log price, low, high, p-value of ``listed``) by the listing's words alone: the
        conformal interval at ``level`` around the words model's price; None without one."""
        ref = self.arrays.get("words_scores")
        if self.words is None or ref is None:
            return None
        mu = float(self.words.predict([title], [category])[0])
        q = conformal_quantile(ref, level)
        p = None if listed is None else p_value(ref, abs(math.log(listed) - mu))
        return mu, cents(mu - q), cents(mu + q), p


def p_value(ref: np.ndarray, score: float) -> float:
    """The share of reference scores at least ``score``, the row itself counted."""
    return (1 + int((ref >= score - 1e-12).sum())) / (len(ref) + 1)


def band_scores(lps: Sequence[np.ndarray], log_grid: np.ndarray, y: np.ndarray,
                sort: bool = True) -> np.ndarray:
    """Each true log price's distance outside its distribution's middle half (sorted)."""
    band = np.array([central_band(g, log_grid, 0.5) for g in lps])
    out = np.maximum(np.maximum(band[:, 0] - y, y - band[:, 1]), 0.0)
    return np.sort(out) if sort else out


DOUBT_WEIGHTS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)


def fit_margins(lps: Sequence[np.ndarray], log_grid: np.ndarray, y: np.ndarray,
                p_cat: np.ndarray, folds: int = 5) -> tuple[float, dict[float, float]]:
    """(lambda, level -> Q): lambda gives the narrowest 80% intervals in 5-fold
    cross-validation inside the validation rows; Q is then fitted on all of them."""
    bands = {lv: np.array([central_band(lp, log_grid, lv) for lp in lps]) for lv in LEVELS}

    def scores(level: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
        b = bands[level]
        w = 1 + lam * (1 - p_cat)
        return np.maximum(b[:, 0] - y, y - b[:, 1]) / w, w

    order = np.random.default_rng(0).permutation(len(y)) % folds
    best = (math.inf, 0.0)
    for lam in DOUBT_WEIGHTS:
        s, w = scores(0.8, lam)
        widths = []
        for f in range(folds):
            q = conformal_quantile(s[order != f], 0.8)
            b = bands[0.8][order == f]
            widths += ((np.exp(b[:, 1] + q * w[order == f]) - np.exp(b[:, 0] - q * w[order == f]))
                       / np.exp(y[order == f])).tolist()
        best = min(best, (float(np.median(widths)), lam))
    lam = best[1]
    margins = {lv: conformal_quantile(scores(lv, lam)[0], lv) for lv in LEVELS}
    margins = {k: v for k, v in margins.items() if math.isfinite(v)}
    if not margins:
        raise ProductVLMError("calibration: too few validation rows for any interval level")
    return lam, margins
