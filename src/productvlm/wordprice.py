"""The listing's own words as a price model: what a pricing analyst would fit in a spreadsheet,
so that an audit is never less sharp than that.

A ridge regression of log price on the title's words and the category (one-hot), fitted on
the training split. It is cross-fitted: the training listings are split in :data:`FOLDS`
groups by their (title, category), one model is fitted without each group, and a listing
whose (title, category) the training split holds is priced by the model that did not see it
(others by the model of the whole split). So no listing is scored by a model that learned
its own price, and the validation residuals that calibrate it are honest.

The calibration (productvlm.calibration) keeps it with the photo's price distribution: the
audit multiplies that distribution by the words' (a Gaussian in log price) and judges the
listed price by the product, and shows the words' own interval.

>>> wp = WordPrice.fit(["Check Tote", "Lola Bag"], ["BAGS", "BAGS"], [890.0, 2290.0])
>>> round(float(np.exp(wp.predict(["Lola Bag"], ["BAGS"])[0])))  # doctest: +SKIP
1427
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from productvlm.prompts import title_words

FOLDS = 5
ALPHAS = (0.3, 1.0, 3.0, 10.0)  # ridge penalties tried; the best out-of-fold one is kept


def listing_key(title: str, category: str) -> int:
    """A stable 63-bit id of a (title, category): its cross-fitting group.

    >>> listing_key("Lola Bag", "BAGS") == listing_key("Lola Bag", "BAGS")
    True
    """
    digest = hashlib.blake2b(f"{category}\x1f{title}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class WordPrice:
    """Ridge models of log price over words and category: row 0 of ``coef`` is fitted on the
    whole training split, row ``k + 1`` without cross-fitting group ``k``."""

    features: list[str]  # "w:<word>" and "c:<category>"
    coef: np.ndarray  # (FOLDS + 1) x features
    intercept: np.ndarray  # FOLDS + 1
    keys: np.ndarray  # sorted listing_key of every training listing (int64)
    alpha: float
    stats: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)
    _seen: set[int] = field(default_factory=set, repr=False, compare=False)

    @staticmethod
    def _names(title: str, category: str) -> list[str]:
        return [f"w:{w}" for w in dict.fromkeys(title_words(title))] + [f"c:{category}"]

    @classmethod
    def fit(cls, titles: Sequence[str], categories: Sequence[str],
            prices: Sequence[float]) -> WordPrice:
        """Fit the whole-split model and the cross-fitted ones (the penalty chosen by the
        out-of-fold error)."""
        from sklearn.linear_model import Ridge
        from sklearn.preprocessing import MultiLabelBinarizer

        pairs = list(zip(titles, categories, strict=True))
        binarizer = MultiLabelBinarizer(sparse_output=True)  # one column a word or category
        x = binarizer.fit_transform([cls._names(t, c) for t, c in pairs]).astype(np.float64)
        names = [str(n) for n in binarizer.classes_]
        keys = np.array([listing_key(t, c) for t, c in pairs], dtype=np.int64)
        wp = cls(names, np.zeros((FOLDS + 1, len(names))), np.zeros(FOLDS + 1),
                 np.unique(keys), ALPHAS[0])
        y = np.log(np.asarray(prices, dtype=np.float64))
        group = keys % FOLDS
        best = None
        for alpha in ALPHAS:
            oof = np.zeros(len(y))
            fitted = []
            for k in range(FOLDS):
                held = group == k
                if held.all() or not held.any():
                    fitted.append(None)
                    continue
                m = Ridge(alpha=alpha).fit(x[~held], y[~held])
                oof[held] = m.predict(x[held])
                fitted.append(m)
            err = float(np.mean((oof - y) ** 2))
            if best is None or err < best[0]:
                best = (err, alpha, fitted)
        assert best is not None
        err, wp.alpha, fitted = best
        whole = Ridge(alpha=wp.alpha).fit(x, y)
        for k, m in enumerate([whole, *fitted]):
            m = m or whole  # a group with every (or no) row: the whole model stands in
            wp.coef[k], wp.intercept[k] = m.coef_, m.intercept_
        wp.stats = {"training_rows": len(y), "features": len(names), "alpha": wp.alpha,
                    "out_of_fold_rmse": round(err ** 0.5, 4)}
        return wp

    def predict(self, titles: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        """Log price of each listing, each from a model that did not see it (a few
        microseconds a listing: an audit asks for one at a time)."""
        if self._index is None:
            self._index = {f: i for i, f in enumerate(self.features)}
            self._seen = set(self.keys.tolist())
        out = np.empty(len(titles))
        for r, (t, c) in enumerate(zip(titles, categories, strict=True)):
            key = listing_key(t, c)
            model = 1 + key % FOLDS if key in self._seen else 0
            idx = [self._index[n] for n in self._names(t, c) if n in self._index]
            out[r] = self.coef[model, idx].sum() + self.intercept[model]
        return out

    # -- storing (inside a calibration's files) ------------------------------------------
    def to_parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON metadata, arrays) for the calibration's files."""
        meta = {"features": self.features, "alpha": self.alpha, "stats": self.stats}
        return meta, {"words_coef": self.coef, "words_intercept": self.intercept,
                      "words_keys": self.keys}

    @classmethod
    def from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> WordPrice:
        return cls(list(meta["features"]), arrays["words_coef"].astype(np.float64),
                   arrays["words_intercept"].astype(np.float64),
                   arrays["words_keys"].astype(np.int64), float(meta["alpha"]),
                   dict(meta.get("stats", {})))


__all__ = ["FOLDS", "WordPrice", "listing_key"]
