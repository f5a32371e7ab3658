"""How far to trust an answer: calibrated price intervals, category probability, confidence.

For each photo the Predictor measures three things besides the answer (:class:`Signals`):

* ``price_logprobs``: the model's log-probability of every candidate price (the distinct
  training prices, :attr:`Calibration.grid`) after its own "... Full Price: " prefix, each
  tokenized as the collator tokenizes an answer; a distribution over prices;
* ``answer_logprob``: the mean log-probability of the title and category tokens it chose;
* ``features``: the image side's mean image token (what the decoder sees of the photo).

A :class:`Calibration`, fitted on the validation split and stored in the run directory
(``calibration/``), turns them into:

* a **price interval** at any level from 50% to 99%: conformalized quantile regression (CQR,
  Romano et al. 2019) on log price, locally weighted. The model's own distribution gives the
  central band ``[q(a), q(1-a)]``; a wrong category makes that band confidently wrong, so
  the margin around it grows with the doubt about the category: ``[q(a) - Q w, q(1-a) + Q w]``
  with ``w = 1 + lambda (1 - category probability)``. The validation split gives ``Q``, so
  that the interval covers the truth for ``level`` of the validation rows (split conformal:
  the stated coverage holds on new data from the same catalog), and ``lambda`` (by 5-fold
  cross-validation inside the validation split: the narrowest intervals);
* the **category probability**: linear discriminant analysis on the image features (class
  means from the training split, one shared, shrunk covariance) with a temperature fitted on
  the validation split, read at the answer's category;
* an overall **confidence**: the chance that the answer's category is right and its price
  within 25% of the truth (a logistic regression on the validation split over the category
  probability and the answer's log-probability), times a typicality gate that goes to 0 for
  pictures unlike every validation photo: the lower of two gates, the smallest Mahalanobis
  distance of the image features to a category's mean and the Mahalanobis distance of the
  picture's layout statistics (:mod:`productvlm.photostats`: plain border, compact
  foreground, few long edges) to the training photos', each against the validation photos'
  distances;
* for an audit, the same price distribution read after the *catalog's* title and category
  (``given_logprobs``): an interval for the listed product (plain CQR, fitted on the
  validation rows with their own titles and categories) and the **surprise** of a listed
  price: how far it lies outside the distribution's middle half, in log price, with its
  conformal p-value among the validation rows' correct prices. With a words model
  (:mod:`productvlm.wordprice`, a cross-fitted ridge on the title's words and the category,
  fitted on the training split), the surprise adds the listed price's distance from the
  words' price (both in log price, so no weight to tune), and the validation scores are read
  the same way, so the level stays honest.

Where each choice came from: docs/calibration.md (measured on three synth catalogs).

>>> cal = Calibration.load(Path("runs/demo/train/calibration"))  # doctest: +SKIP
>>> cal.interval(signals.price_logprobs, 0.8)  # doctest: +SKIP
(1650.0, 2480.0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from productvlm.errors import ProductVLMError
from productvlm.wordprice import WordPrice

#: Levels the margin table covers (any level in between is interpolated).
LEVELS = tuple(round(x, 2) for x in np.arange(0.50, 0.995, 0.01))
USABLE_APE = 0.25  # a price within 25% of the truth counts as right, for the confidence
TYPICAL_TAIL = 0.05  # photos stranger than all but this share of validation ones lose confidence
PCA_DIMS = 64
FILE_JSON, FILE_ARRAYS = "calibration.json", "features.safetensors"


@dataclass
class Signals:
    """What the Predictor measured for one photo, before any calibration."""

    price_logprobs: np.ndarray | None = None  # over Calibration.grid, after the answer
    given_logprobs: np.ndarray | None = None  # ... after a given title and category (audits)
    answer_logprob: float | None = None  # mean over the title and category tokens
    features: np.ndarray | None = None  # pooled image features
    photo: np.ndarray | None = None  # the picture's layout statistics (photostats)


@dataclass
class Uncertainty:
    """A calibrated reading of one answer (fields of the Prediction record)."""

    price_low: float | None = None
    price_high: float | None = None
    interval_level: float | None = None
    category_prob: float | None = None
    confidence: float | None = None
    typicality: float | None = None  # 1: as typical as most validation photos; towards 0: odd


def central_band(logprobs: np.ndarray, log_grid: np.ndarray, level: float) -> tuple[float, float]:
    """The model's own quantiles ``q((1-level)/2)``, ``q((1+level)/2)`` of log price."""
    p = np.exp(logprobs - logprobs.max())
    cdf = np.cumsum(p / p.sum())
    a = (1 - level) / 2
    lo = log_grid[min(int(np.searchsorted(cdf, a)), len(cdf) - 1)]
    hi = log_grid[min(int(np.searchsorted(cdf, 1 - a)), len(cdf) - 1)]
    return float(lo), float(hi)


def _cents(log_price: float) -> float:
    """A log price back as a price in cents. The bounds are often grid prices themselves
    (a margin of 0): rounding makes exp(log(490)) 490.00 again, so a true price on the bound
    is inside, as the conformal score counted it."""
    return round(math.exp(log_price), 2)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n+1) level)-th smallest score (inf when n is too small for the level)."""
    n = len(scores)
    k = math.ceil((n + 1) * level)
    return float(np.sort(scores)[k - 1]) if 0 < k <= n else math.inf


@dataclass
class Calibration:
    """Fitted on a validation split; see the module docstring. Saved as ``calibration/``."""

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
        return _cents(lo), _cents(hi)

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
        gate = _gate(self._distances(features).min(-1), self.arrays["validation_d2"])
        if photos is not None and "photo_precision" in self.arrays:
            gate = np.minimum(gate, _gate(self._photo_distances(photos),
                                          self.arrays["validation_photo_d2"], tail=None))
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

    def given_interval(self, logprobs: np.ndarray, level: float) -> tuple[float, float]:
        """(low, high) price at ``level`` for a product with the catalog's title and category."""
        if not self.given_margins:
            raise ProductVLMError("this calibration has no listing intervals; calibrate again "
                                  "(productvlm evaluate) to audit with it")
        lo, hi = central_band(logprobs, self.log_grid, level)
        xs = sorted(self.given_margins)
        q = float(np.interp(level, xs, [self.given_margins[x] for x in xs]))
        lo, hi = (lo - q, hi + q) if lo - q <= hi + q else ((lo + hi) / 2,) * 2
        return _cents(lo), _cents(hi)

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
        return score, _p_value(ref, score), photo

    def photo_p_value(self, photo_surprise: float) -> float:
        """The p-value of the photo's own surprise among the validation rows'."""
        ref = self.arrays.get("photo_scores", self.arrays.get("given_scores"))
        return _p_value(ref, photo_surprise)

    def words_price(self, title: str, category: str, listed: float | None = None,
                    level: float = 0.8) -> tuple[float, float, float, float | None] | None:
        """(log price, low, high, p-value of ``listed``) by the listing's words alone: the
        conformal interval at ``level`` around the words model's price; None without one."""
        ref = self.arrays.get("words_scores")
        if self.words is None or ref is None:
            return None
        mu = float(self.words.predict([title], [category])[0])
        q = conformal_quantile(ref, level)
        p = None if listed is None else _p_value(ref, abs(math.log(listed) - mu))
        return mu, _cents(mu - q), _cents(mu + q), p

    def _distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (n x categories) in the PCA space."""
        a = self.arrays
        z = (np.asarray(features, dtype=np.float64) - a["pca_mean"]) @ a["pca_components"].T
        diff = z[:, None, :] - a["class_means"][None, :, :]
        return np.einsum("nkd,de,nke->nk", diff, a["precision"], diff)

    # -- storing -------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Write ``folder/calibration.json`` and ``folder/features.safetensors``."""
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        meta = {"grid": self.grid, "margins": {f"{k:.2f}": v for k, v in self.margins.items()},
                "categories": self.categories, "temperature": self.temperature,
                "confidence_coef": self.confidence_coef,
                "confidence_intercept": self.confidence_intercept,
                "doubt_weight": self.doubt_weight,
                "given_margins": {f"{k:.2f}": v for k, v in self.given_margins.items()},
                "stats": self.stats}
        arrays = dict(self.arrays)
        if self.words is not None:
            meta["words"], words_arrays = self.words.to_parts()
            arrays.update(words_arrays)
        (folder / FILE_JSON).write_text(json.dumps(meta, indent=1))
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                  str(folder / FILE_ARRAYS))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Calibration:
        """Read what :meth:`save` wrote; a clear error when it is damaged."""
        from safetensors.numpy import load_file

        try:
            meta = json.loads((folder / FILE_JSON).read_text())
            arrays = load_file(str(folder / FILE_ARRAYS))
            words = WordPrice.from_parts(meta["words"], arrays) if "words" in meta else None
            arrays = {k: v for k, v in arrays.items() if not k.startswith("words_")
                      or k == "words_scores"}
            return cls(grid=[float(x) for x in meta["grid"]],
                       margins={float(k): float(v) for k, v in meta["margins"].items()},
                       categories=list(meta["categories"]),
                       temperature=float(meta["temperature"]),
                       confidence_coef=[float(x) for x in meta["confidence_coef"]],
                       confidence_intercept=float(meta["confidence_intercept"]),
                       arrays={k: v.astype(np.float64) for k, v in arrays.items()},
                       stats=dict(meta.get("stats", {})),
                       doubt_weight=float(meta.get("doubt_weight", 0.0)),
                       given_margins={float(k): float(v)
                                      for k, v in meta.get("given_margins", {}).items()},
                       words=words)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ProductVLMError(f"{folder}: unreadable calibration ({e}); delete the folder "
                                  "and run `productvlm evaluate` to calibrate again") from None

    # -- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, grid: Sequence[float], signals: Sequence[Signals], answers: Sequence[Any],
            truths: Sequence[Any], train_features: np.ndarray,
            train_categories: Sequence[str], train_photos: np.ndarray | None = None,
            train_listings: tuple[Sequence[str], Sequence[float]] | None = None
            ) -> Calibration:
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
        cal.doubt_weight, cal.margins = _fit_margins(lps, log_grid, y, p_ans)
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
            cal.arrays["photo_scores"] = _band_scores(given, log_grid, y)
            cal.arrays["given_scores"] = cal.arrays["photo_scores"]
            if train_listings is not None and len(set(train_listings[1])) > 1:
                titles, prices = train_listings
                cal.words = WordPrice.fit(titles, list(train_categories), prices)
                mu = cal.words.predict([t.title for t in truths], [t.category for t in truths])
                words = np.abs(y - mu)
                cal.arrays["words_scores"] = np.sort(words)
                cal.arrays["given_scores"] = np.sort(_band_scores(given, log_grid, y, sort=False)
                                                     + words)
        cal.stats = {"validation_rows": len(signals), "training_photos": len(x),
                     "doubt_weight": cal.doubt_weight,
                     "grid_size": len(grid), "usable_rate": round(float(np.mean(usable)), 4),
                     "temperature": round(cal.temperature, 4)}
        return cal


def _p_value(ref: np.ndarray, score: float) -> float:
    """The share of reference scores at least ``score``, the row itself counted."""
    return (1 + int((ref >= score - 1e-12).sum())) / (len(ref) + 1)


def _band_scores(lps: Sequence[np.ndarray], log_grid: np.ndarray, y: np.ndarray,
                 sort: bool = True) -> np.ndarray:
    """Each true log price's distance outside its distribution's middle half (sorted)."""
    band = np.array([central_band(g, log_grid, 0.5) for g in lps])
    out = np.maximum(np.maximum(band[:, 0] - y, y - band[:, 1]), 0.0)
    return np.sort(out) if sort else out


def _gate(d2: np.ndarray, ref: np.ndarray, tail: float | None = TYPICAL_TAIL) -> np.ndarray:
    """A typicality gate from squared distances ``d2`` and the validation photos' ``ref``:
    the conformal p-value over ``tail`` (capped at 1; None: 1 up to the farthest validation
    photo), decaying exponentially past the farthest validation photo."""
    far, mid = float(ref.max()), float(np.median(ref))
    decay = np.exp(-np.clip(d2 - far, 0, None) / max(far - mid, 1e-6))
    if tail is None:
        return decay
    p = (1 + (ref[None, :] >= d2[:, None]).sum(-1)) / (len(ref) + 1)
    return np.minimum(1.0, p * decay / tail)


DOUBT_WEIGHTS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)


def _fit_margins(lps: Sequence[np.ndarray], log_grid: np.ndarray, y: np.ndarray,
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
