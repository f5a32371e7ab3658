"""Judging listed prices against the model: one row's verdict, and how well the verdicts find
known errors (what `productvlm audit` writes, and what `evaluate` adds where a split carries
injected errors).

A listed price is judged by everything the listing says: the model's price distribution for
the photo *with the listing's own title and category* (``Signals.given_logprobs``) and the
words' price model (productvlm.wordprice: a ridge on the title's words and the category,
fitted on the training split, cross-fitted). The surprise of the listed price (how far
outside the photo's distribution's middle half, plus how far from the words' price, both in
log price) gets its conformal p-value among the validation rows' correct prices, scored the
same way. A price is flagged when that p-value is at most ``1 - flag_level`` (default 99%: about
1% of correct prices are flagged, by construction; with ~100 validation rows, only prices
further out than every validation price), unless the title has words no training title had
(then neither the model nor the words can judge). The verdict also carries each evidence on
its own (the photo's interval and p-value, the words' interval and p-value), and ``why``
names the ones that disagree with the price.

>>> v = judge(prediction, listed=12900.0, calibration=cal)  # doctest: +SKIP
>>> v.flagged, v.why  # doctest: +SKIP
(True, 'listed 12,900.00 is 9.6x above its middle half 1,190.00-1,340.00 for ...')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from productvlm.answer import format_price
from productvlm.calibration import Calibration, central_band

FLAG_LEVEL = 0.99
#: typicality under which a verdict says that the photo is unlike the training photos
JUDGE_TYPICALITY = 0.2
#: an evidence whose own p-value is at most this "disagrees" with the price, in ``why``
DISAGREES = 0.05
#: The kinds of wrong listed prices an audit is scored on (``synth --mispricing-rate`` writes
#: them to faults.csv): a decimal slip (x10 or /10), a price swapped with a product of
#: another category, a moderate error (x0.6 or x1.5).
MISPRICING_KINDS = ("price_decimal_slip", "price_swap", "price_moderate")


@dataclass
class Verdict:
    """What the model makes of one listed price."""

    predicted: float | None  # the median of the price distribution given the listing
    low: float | None  # the photo's interval (the model's, after the listing's words)
    high: float | None
    surprise: float | None
    p_value: float | None
    flagged: bool
    why: str
    words_price: float | None = None  # the words model's price and interval
    words_low: float | None = None
    words_high: float | None = None
    photo_surprise: float | None = None  # the listed price's surprise by the photo alone
    p_photo: float | None = None  # ... and its p-value
    p_words: float | None = None  # ... by the words alone


def judge(signals: Any, listed: float, calibration: Calibration, *, title: str | None = None,
          category: str | None = None, level: float = 0.8, flag_level: float = FLAG_LEVEL,
          typicality: float | None = None, unknown_words: Sequence[str] = ()) -> Verdict:
    """The verdict on ``listed`` from a photo's signals (with ``given_logprobs``) and, with
    its ``title`` and ``category``, the listing's words.

    Not judged (no surprise, never flagged): a title with words no training title had
    (``unknown_words``): the model cannot know what "alligator" does to a price if it never
    saw one, and would flag every such listing. A photo unlike the training photos
    (``typicality`` under :data:`JUDGE_TYPICALITY`) is judged, the title carrying the
    model's opinion, and the verdict says so.
    """
    lp = getattr(signals, "given_logprobs", None)
    if lp is None:
        return Verdict(None, None, None, None, None, False, "no answer to judge the price by")
    log_grid = calibration.log_grid
    words = (calibration.words_price(title, category, listed, level)
             if title is not None and category is not None else None)
    mid = math.exp(sum(central_band(lp, log_grid, 0.0)) / 2)
    low, high = calibration.given_interval(lp, level)
    surprise, p_value, s_photo = calibration.surprise(lp, listed, words[0] if words else None)
    verdict = Verdict(round(mid, 2), round(low, 2), round(high, 2), round(surprise, 4),
                      round(p_value, 4), False, "", photo_surprise=round(s_photo, 4),
                      p_photo=round(calibration.photo_p_value(s_photo), 4))
    if words is not None:
        verdict.words_price = round(math.exp(words[0]), 2)
        verdict.words_low, verdict.words_high = words[1], words[2]
        verdict.p_words = round(words[3], 4) if words[3] is not None else None
    q1, q3 = (math.exp(x) for x in central_band(lp, log_grid, 0.5))
    band = f"the photo's middle half {format_price(q1)}-{format_price(q3)}"
    off = (f" and {math.exp(surprise - s_photo):.2f}x from the words' "
           f"{format_price(verdict.words_price)}" if verdict.words_price is not None else "")
    if unknown_words:
        words_ = ", ".join(f"'{w}'" for w in unknown_words[:3])
        verdict.why = f"not judged: no training title had {words_}"
        verdict.surprise = verdict.p_value = verdict.photo_surprise = None
    elif p_value > 1 - flag_level + 1e-9:
        verdict.why = (f"within what the photo and the words expect (p={p_value:.2f})"
                       if surprise == 0 else
                       f"{math.exp(s_photo):.2f}x outside {band}{off}, as some correct prices "
                       f"are (p={p_value:.2f})")
    else:
        verdict.flagged = True
        verdict.why = (f"listed {format_price(listed)} is {math.exp(s_photo):.2f}x outside "
                       f"{band}{off}: further out than any correct price the model was "
                       f"calibrated on (p={p_value:.3f}); {_evidence(verdict)}")
    if typicality is not None and typicality < JUDGE_TYPICALITY and not unknown_words:
        verdict.why += "; the photo is unlike the training photos: the title decided"
    return verdict


def _evidence(v: Verdict) -> str:
    """Which evidence disagrees with the listed price, in words."""
    photo = v.p_photo is not None and v.p_photo <= DISAGREES
    words = v.p_words is not None and v.p_words <= DISAGREES
    what = ("the photo and the words both disagree" if photo and words else
            "the photo disagrees" if photo else "the words disagree" if words else
            "the photo and the words together disagree")
    parts = [f"photo {format_price(v.low)}-{format_price(v.high)} (p={v.p_photo:.3f})"
             if v.low is not None and v.p_photo is not None else ""]
    if v.words_price is not None and v.p_words is not None:
        parts.append(f"words {format_price(v.words_low)}-{format_price(v.words_high)} "
                     f"(p={v.p_words:.3f})")
    return f"{what} ({'; '.join(p for p in parts if p)})"


def rule_scores(listed: Sequence[float], categories: Sequence[str]) -> np.ndarray:
    """The baseline a pricing team would run: how far each listed price is from its listed
    category's median (|log ratio|), the medians taken over the same catalog."""
    prices = np.log(np.asarray(listed, dtype=float))
    cats = np.asarray(categories)
    median = {c: float(np.median(prices[cats == c])) for c in set(cats.tolist())}
    return np.abs(prices - np.array([median[c] for c in cats]))


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(positive, dtype=bool)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


def precision_at_recall(scores: Sequence[float], positive: Sequence[bool],
                        recall: float = 0.95) -> float | None:
    """Precision at the highest threshold that reaches ``recall`` of the positives."""
    s, y = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    if not y.any():
        return None
    need = math.ceil(recall * y.sum())
    threshold = np.sort(s[y])[::-1][need - 1]
    hit = s >= threshold
    return float((hit & y).sum() / hit.sum())


def mispricing_figures(kinds: Sequence[str], surprise: Sequence[float],
                       flagged: Sequence[bool], rule: Sequence[float]) -> dict[str, Any]:
    """Per kind of known error: the surprise's ROC AUC and precision at 95% recall, and the
    flags' recall and precision, each against the clean rows and beside the rule's.

    ``kinds``: per row ``"clean"`` or the error's kind (see :func:`known_errors`).
    """
    kinds_arr = np.asarray(kinds)
    out: dict[str, Any] = {}
    for kind in [k for k in MISPRICING_KINDS if k in set(kinds)]:
        rows = (kinds_arr == kind) | (kinds_arr == "clean")
        pos = kinds_arr[rows] == kind
        s, r = np.asarray(surprise)[rows], np.asarray(rule)[rows]
        f = np.asarray(flagged)[rows]
        out[kind] = {
            "rows": int(pos.sum()),
            "auc": roc_auc(s, pos), "rule_auc": roc_auc(r, pos),
            "precision_at_95_recall": precision_at_recall(s, pos),
            "rule_precision_at_95_recall": precision_at_recall(r, pos),
            "flag_recall": float(f[pos].mean()),
            "flag_precision": float((f & pos).sum() / f.sum()) if f.any() else None,
        }
    clean = kinds_arr == "clean"
    if clean.any():
        out["clean_flag_rate"] = float(np.asarray(flagged)[clean].mean())
    return out


def known_errors(path: Any) -> dict[int, str]:
    """row -> kind of wrong listed price, from a faults.csv (other faults are not price errors:
    their rows count as clean where they are audited at all)."""
    import csv

    from productvlm.errors import ProductVLMError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {int(r["row"]): r["kind"] for r in csv.DictReader(f)
                    if r.get("kind") in MISPRICING_KINDS}
    except (OSError, KeyError, ValueError) as e:
        raise ProductVLMError(f"{path}: not a faults.csv with row and kind columns ({e})") \
            from None
