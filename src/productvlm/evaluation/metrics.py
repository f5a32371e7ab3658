"""Evaluation metrics: pure functions ``(targets, predictions) -> dict``.

``targets`` are :class:`~productvlm.answer.ProductFields` (the truth), ``predictions`` are
:class:`~productvlm.answer.ParsedAnswer` (what the model said, parsed), aligned row by row.

How an answer that did not parse counts (the same rules for the model and the baselines):

* Each field is scored on what was read. A field the parser could not read (``None``) is
  wrong: category accuracy and macro-F1 count it as a miss of the true class (it is not a
  class of its own), title exact match and token F1 score it 0, and chrF scores it as an
  empty hypothesis. ``parse_rate`` is the share of answers with every field read (``.ok``).
* Price metrics are computed over every row. A row without a readable price is filled with
  ``fallback_price`` (the evaluate stage passes the training median, i.e. the answer of the
  constant baseline) and counted in ``price_n_fallback``. Without a fallback such rows are
  left out and ``price_n_scored`` says how many rows the price metrics cover.
* A predicted price of 0 is a prediction (percentage error 1.0); a negative or non-finite one
  is treated as unreadable.

Ratios are fractions in [0, 1] (``price_mape`` 0.12 means 12 %); chrF is on sacreBLEU's
0-100 scale so it compares with published numbers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from productvlm.answer import (
    DEFAULT_SCHEMA,
    AnswerField,
    AnswerSchema,
    ParsedAnswer,
    ProductFields,
)
from productvlm.errors import ProductVLMError

Targets = Sequence[ProductFields]
Predictions = Sequence[ParsedAnswer]

#: Column label for answers whose category could not be read (confusion matrix).
UNPARSED = "(unparsed)"


def check_aligned(targets: Targets, predictions: Predictions) -> None:
    """Raise a clear error unless there is one prediction per target and at least one row."""
    if len(targets) != len(predictions):
        raise ProductVLMError(
            f"metrics: {len(targets)} targets but {len(predictions)} predictions; "
            "pass one prediction per target, in the same order"
        )
    if not targets:
        raise ProductVLMError("metrics: no rows to score; the evaluation split is empty")


# --------------------------------------------------------------------------- parsing


def parse_metrics(targets: Targets, predictions: Predictions) -> dict[str, float]:
    """Row count and the share of answers that parsed completely.

    >>> parse_metrics([t1, t2], [ParsedAnswer("a", "B", 1.0), ParsedAnswer(error="x")])
    {'n': 2, 'n_unparsed': 1, 'parse_rate': 0.5}
    """
    check_aligned(targets, predictions)
    n_bad = sum(not p.ok for p in predictions)
    return {"n": len(targets), "n_unparsed": n_bad, "parse_rate": 1 - n_bad / len(targets)}


# --------------------------------------------------------------------------- price


def _valid_price(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x >= 0


def price_pairs(
    targets: Targets, predictions: Predictions, fallback_price: float | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(true prices, predicted prices, rows filled with the fallback), per the rules above."""
    check_aligned(targets, predictions)
    true, pred, n_fallback = [], [], 0
    for i, (t, p) in enumerate(zip(targets, predictions, strict=True)):
        if not (t.price is not None and math.isfinite(t.price) and t.price > 0):
            raise ProductVLMError(
                f"metrics: target row {i} has price {t.price!r}; true prices must be positive"
            )
        if _valid_price(p.price):
            value = p.price
        elif fallback_price is not None:
            value, n_fallback = fallback_price, n_fallback + 1
        else:
            continue
        true.append(t.price)
        pred.append(value)
    return np.asarray(true, dtype=float), np.asarray(pred, dtype=float), n_fallback


def price_metrics(
    targets: Targets, predictions: Predictions, *, fallback_price: float | None = None
) -> dict[str, float]:
    """MAE, MAPE, median APE, share within 10 % / 25 %, RMSE of log price.

    The log error uses ``log1p`` so that a predicted price of 0 stays finite; for prices
    above a few units it is the plain log ratio (0.1 ≈ a typical error of 10 %).

    >>> price_metrics([ProductFields("a", "B", 100.0)], [ParsedAnswer("a", "B", 110.0)])
    {'price_mae': 10.0, 'price_mape': 0.1, ...}
    """
    true, pred, n_fallback = price_pairs(targets, predictions, fallback_price)
    out = {"price_n_scored": len(true), "price_n_fallback": n_fallback}
    if len(true) == 0:  # nothing readable and no fallback: every price metric is undefined
        nan = float("nan")
        keys = ("mae", "mape", "median_ape", "within_10pct", "within_25pct", "rmse_log")
        return {**{f"price_{k}": nan for k in keys}, **out}
    abs_err = np.abs(pred - true)
    ape = abs_err / true
    log_err = np.log1p(pred) - np.log1p(true)
    return {
        "price_mae": float(abs_err.mean()),
        "price_mape": float(ape.mean()),
        "price_median_ape": float(np.median(ape)),
        # a tiny tolerance so that 110 vs 100 counts as "within 10 %" despite float rounding
        "price_within_10pct": float((ape <= 0.10 + 1e-9).mean()),
        "price_within_25pct": float((ape <= 0.25 + 1e-9).mean()),
        "price_rmse_log": float(np.sqrt(np.mean(log_err**2))),
        **out,
    }


# --------------------------------------------------------------------------- category


def _label(x: str | None) -> str | None:
    """Categories are codes: compare them ignoring case and surrounding/double spaces."""
    return " ".join(x.split()).casefold() if x and x.strip() else None


def same_label(a: object, b: object) -> bool:
    """Whether two values read the same as labels (case and spaces aside; None is no label).

    >>> same_label(" Dark  navy", "dark navy"), same_label(None, "Navy")
    (True, False)
    """
    la, lb = _label(None if a is None else str(a)), _label(None if b is None else str(b))
    return la is not None and la == lb


def _labels(targets: Targets, predictions: Predictions, field: str):
    y_true = [_label(t.get(field)) for t in targets]
    y_pred = [_label(p.get(field)) for p in predictions]
    return y_true, y_pred


def per_class_f1(y_true: Sequence[str], y_pred: Sequence[str | None]) -> dict[str, float]:
    """F1 of each class in the truth or among the (non-None) predictions.

    A class never predicted scores 0, so does a class predicted but absent from the truth;
    ``None`` predictions are misses of the true class, not a class of their own.
    """
    classes = sorted(set(y_true) | {p for p in y_pred if p is not None})
    tp, n_true, n_pred = Counter(), Counter(y_true), Counter(p for p in y_pred if p is not None)
    for t, p in zip(y_true, y_pred, strict=True):
        if t == p:
            tp[t] += 1
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (n_pred + n_true); the denominator is never 0 here
    return {c: 2 * tp[c] / (n_pred[c] + n_true[c]) for c in classes}


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """Unweighted mean of :func:`per_class_f1`.

    Equals scikit-learn's ``f1_score(y_true, y_pred, average="macro",
    labels=sorted(set(y_true) | set(parsed predictions)))``.

    >>> macro_f1(["a", "a", "b"], ["a", "b", "b"])  # F1(a)=2/3, F1(b)=2/3
    0.666...
    """
    scores = per_class_f1(y_true, y_pred)
    return sum(scores.values()) / len(scores) if scores else float("nan")


def category_metrics(
    targets: Targets, predictions: Predictions, *, field: str = "category"
) -> dict[str, float]:
    """Accuracy and macro-F1 of one category level, keys prefixed with the field name.

    ``field`` is a field of both the target and the answer, so a label field of the answer
    schema (``colour``, a deeper level ``category1``) is scored the same way.

    >>> category_metrics([ProductFields("a", "BAGS", 1.0)], [ParsedAnswer("a", "bags", 1.0)])
    {'category_accuracy': 1.0, 'category_macro_f1': 1.0}
    """
    check_aligned(targets, predictions)
    y_true, y_pred = _labels(targets, predictions, field)
    if any(t is None for t in y_true):
        raise ProductVLMError(f"metrics: a target row has no '{field}'; every row needs one")
    accuracy = sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)
    return {f"{field}_accuracy": accuracy, f"{field}_macro_f1": macro_f1(y_true, y_pred)}


def confusion_matrix(
    targets: Targets, predictions: Predictions, *, field: str = "category"
) -> tuple[list[str], list[str], list[list[int]]]:
    """(row labels = true classes, column labels = predicted classes + UNPARSED, counts).

    Labels keep the spelling first seen in the truth; rows are ordered by support.
    """
    check_aligned(targets, predictions)
    display: dict[str, str] = {}
    for x in [t.get(field) for t in targets] + [p.get(field) for p in predictions]:
        if _label(x) is not None:
            display.setdefault(_label(x), " ".join(x.split()))
    y_true, y_pred = _labels(targets, predictions, field)
    support = Counter(y_true)
    rows = sorted(support, key=lambda c: (-support[c], c))
    cols = rows + sorted({p for p in y_pred if p is not None} - set(rows)) + [None]
    index = {c: j for j, c in enumerate(cols)}
    matrix = [[0] * len(cols) for _ in rows]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[index[t]][index[p]] += 1
    col_names = [display[c] if c is not None else UNPARSED for c in cols]
    return [display[c] for c in rows], col_names, matrix


# --------------------------------------------------------------------------- title


def normalize_title(text: str | None) -> str:
    """Case- and space-normalised title for exact match: ``"  Lola  BAG" -> "lola bag"``."""
    return " ".join((text or "").split()).casefold()


_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_tokens(text: str | None) -> list[str]:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, split."""
    return _ARTICLES.sub(" ", (text or "").lower().translate(_PUNCT)).split()


def token_f1(prediction: str | None, truth: str | None) -> float:
    """SQuAD token F1 of one answer.

    >>> token_f1("Medium Lola Bag", "Lola Bag")
    0.8
    """
    pred, gold = squad_tokens(prediction), squad_tokens(truth)
    if not pred or not gold:  # SQuAD: 1 when both are empty, else 0
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _chrf_stats(hyp: str, ref: str, order: int) -> list[tuple[int, int, int]]:
    """Per n-gram order: (hypothesis n-grams, reference n-grams, matches); spaces removed."""
    hyp, ref = "".join(hyp.split()), "".join(ref.split())
    stats = []
    for n in range(1, order + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        # like sacreBLEU, hypothesis n-grams do not count when the reference has none
        stats.append((sum(h.values()) if r else 0, sum(r.values()), sum((h & r).values())))
    return stats


def chrf(
    hypotheses: Sequence[str | None], references: Sequence[str], *, order: int = 6, beta: float = 2
) -> float:
    """Corpus chrF (Popović 2015) as sacreBLEU 2.x computes it by default, 0-100.

    Character n-grams of orders 1..6 without whitespace, statistics summed over the corpus,
    precision and recall averaged over the orders that occur in both, then F-beta (beta 2:
    recall weighs more). Case sensitive. ``None`` hypotheses count as empty.

    >>> round(chrf(["Lola Bag"], ["Lola Bag"]), 1)
    100.0
    """
    totals = np.zeros((order, 3))
    for hyp, ref in zip(hypotheses, references, strict=True):
        totals += np.asarray(_chrf_stats(hyp or "", ref or "", order), dtype=float)
    precs, recs = [], []
    for n_hyp, n_ref, n_match in totals:
        if n_hyp > 0 and n_ref > 0:  # sacreBLEU's "effective order"
            precs.append(n_match / n_hyp)
            recs.append(n_match / n_ref)
    if not precs:
        return 0.0
    p, r, b2 = float(np.mean(precs)), float(np.mean(recs)), beta**2
    return 100 * (1 + b2) * p * r / (b2 * p + r) if p + r > 0 else 0.0


def title_metrics(targets: Targets, predictions: Predictions) -> dict[str, float]:
    """Exact match (case/space normalised), mean SQuAD token F1, corpus chrF."""
    check_aligned(targets, predictions)
    pairs = [(p.title, t.title) for t, p in zip(targets, predictions, strict=True)]
    exact = [p is not None and normalize_title(p) == normalize_title(t) for p, t in pairs]
    return {
        "title_exact_match": sum(exact) / len(pairs),
        "title_token_f1": sum(token_f1(p, t) for p, t in pairs) / len(pairs),
        "title_chrf": chrf([p for p, _ in pairs], [t for _, t in pairs]),
    }


# --------------------------------------------------------------------------- extra fields


def field_metrics(targets: Targets, predictions: Predictions,
                  f: AnswerField) -> dict[str, float]:
    """The metrics of one extra answer field, keys prefixed with its name: a label's
    accuracy and macro-F1, a text's token F1 (SQuAD), a number's MAPE and share within 25 %
    (a number not read counts as a 100 % error).

    >>> field_metrics([ProductFields("a", "B", 1.0, {"colour": "Beige"})],
    ...               [ParsedAnswer("a", "B", 1.0, extra={"colour": "beige"})],
    ...               AnswerField("colour", "label", "Colour"))
    {'colour_accuracy': 1.0, 'colour_macro_f1': 1.0}
    """
    check_aligned(targets, predictions)
    name = f.name
    if f.kind == "label":
        return category_metrics(targets, predictions, field=name)
    if f.kind == "text":
        return {f"{name}_token_f1": sum(token_f1(p.get(name), t.get(name)) for t, p in
                                        zip(targets, predictions, strict=True)) / len(targets)}
    ape = np.array([_ape(p.get(name), t.get(name)) for t, p in
                    zip(targets, predictions, strict=True)])
    return {f"{name}_mape": float(ape.mean()),
            f"{name}_within_25pct": float((ape <= 0.25 + 1e-9).mean())}


def _ape(pred: float | None, truth: float) -> float:
    return abs(pred - truth) / truth if _valid_price(pred) else 1.0


# --------------------------------------------------------------------------- together


def all_metrics(
    targets: Targets,
    predictions: Predictions,
    *,
    fallback_price: float | None = None,
    category_fields: Sequence[str] = ("category",),
    schema: AnswerSchema = DEFAULT_SCHEMA,
) -> dict[str, float]:
    """Every metric above in one flat dict (the shape of metrics.json and the W&B summary),
    with :func:`field_metrics` for each of ``schema``'s extra fields.

    >>> all_metrics(targets, predictions, fallback_price=train_median)["price_mae"]
    """
    out = parse_metrics(targets, predictions)
    out |= price_metrics(targets, predictions, fallback_price=fallback_price)
    for field in category_fields:
        out |= category_metrics(targets, predictions, field=field)
    out |= title_metrics(targets, predictions)
    for f in schema.extras:
        out |= field_metrics(targets, predictions, f)
    return out


def row_scores(
    target: ProductFields, prediction: ParsedAnswer, *, fallback_price: float | None = None,
    schema: AnswerSchema = DEFAULT_SCHEMA,
) -> dict[str, float | bool | None]:
    """Scores of one row (for predictions.jsonl and for ranking best/worst cases), then one
    per extra field of ``schema`` (``colour_correct``, ``note_token_f1``, ``size_ape``).

    ``price_ape`` is None when no price was read and there is no fallback.
    """
    price = prediction.price if _valid_price(prediction.price) else fallback_price
    out: dict[str, float | bool | None] = {
        "price_ape": None if price is None else abs(price - target.price) / target.price,
        "category_correct": _label(prediction.category) == _label(target.category),
        "title_exact": prediction.title is not None
        and normalize_title(prediction.title) == normalize_title(target.title),
        "title_token_f1": token_f1(prediction.title, target.title),
    }
    for f in schema.extras:
        got, truth = prediction.get(f.name), target.get(f.name)
        if f.kind == "label":
            out[f"{f.name}_correct"] = _label(got) == _label(truth)
        elif f.kind == "text":
            out[f"{f.name}_token_f1"] = token_f1(got, truth)
        else:
            out[f"{f.name}_ape"] = _ape(got, truth)
    return out


def per_category(
    targets: Targets,
    predictions: Predictions,
    *,
    field: str = "category",
    fallback_price: float | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics within each true category, largest first.

    Per category: ``n``, ``accuracy`` (recall of that class), ``f1`` (that class's F1 over
    the whole split), price MAE / median APE / within 25 %, title token F1.
    """
    rows, _, _ = confusion_matrix(targets, predictions, field=field)
    y_true, y_pred = _labels(targets, predictions, field)
    f1 = per_class_f1(y_true, y_pred)
    out = {}
    for name in rows:
        idx = [i for i, t in enumerate(y_true) if t == _label(name)]
        sub_t, sub_p = [targets[i] for i in idx], [predictions[i] for i in idx]
        price = price_metrics(sub_t, sub_p, fallback_price=fallback_price)
        out[name] = {
            "n": len(idx),
            "accuracy": sum(y_pred[i] == y_true[i] for i in idx) / len(idx),
            "f1": f1[_label(name)],
            "price_mae": price["price_mae"],
            "price_median_ape": price["price_median_ape"],
            "price_within_25pct": price["price_within_25pct"],
            "title_token_f1": title_metrics(sub_t, sub_p)["title_token_f1"],
        }
    return out
