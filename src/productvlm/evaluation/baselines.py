"""Baselines that a photo model has to beat, fitted on the training split only.

Each baseline answers every evaluation row with a :class:`~productvlm.answer.ParsedAnswer`,
so it goes through exactly the same metrics as the model:

* ``constant``: the training median price, the most frequent training category and the
  most frequent training title, for every row. A model that has not looked at the photo.
  An extra answer field (colour, ...) gets its most frequent training value (a number its
  median): the majority baseline a model must beat on that field.
* ``category_oracle``: told the true category, it answers with that category, the median
  training price of the category and the category's most frequent training title (and
  each extra field's most frequent value in the category). It knows something the model
  must read from the photo, so a photo-only model should approach it on price and title
  (its category scores are 1 by construction).

A category absent from training falls back to the global statistic for that row.
Ties between equally frequent values go to the alphabetically first, so a baseline does
not depend on row order.

Example::

    train = fields_from_records(train_rows)
    preds = compute_baselines(train, targets)
    scores = {name: all_metrics(targets, p, fallback_price=median_price(train))
              for name, p in preds.items()}
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from productvlm.answer import DEFAULT_SCHEMA, AnswerSchema, ParsedAnswer, ProductFields
from productvlm.errors import ProductVLMError

#: Display names of the baselines, in report order.
BASELINE_NAMES = {
    "constant": "Train median / majority",
    "category_oracle": "True-category oracle",
}


def fields_from_records(records: Iterable[Mapping[str, Any]],
                        schema: AnswerSchema = DEFAULT_SCHEMA) -> list[ProductFields]:
    """Prepared-dataset rows (dicts with title, category, price and ``schema``'s extra
    fields) -> ProductFields.

    >>> fields_from_records([{"title": "Lola Bag", "category": "BAGS", "price": 2290.0}])
    [ProductFields(title='Lola Bag', category='BAGS', price=2290.0, extra={})]
    """
    out = []
    for i, r in enumerate(records):
        try:
            out.append(schema.truth(r))
        except (KeyError, TypeError, ValueError) as e:
            raise ProductVLMError(
                f"row {i}: needs {', '.join(schema.columns)} and a numeric price ({e!r}); "
                "re-run `productvlm prepare`"
            ) from e
    return out


def _check_train(train: Sequence[ProductFields]) -> None:
    if not train:
        raise ProductVLMError("baselines: the training split is empty; baselines need it")
    bad = [i for i, t in enumerate(train) if not (math.isfinite(t.price) and t.price > 0)]
    if bad:
        raise ProductVLMError(f"baselines: training row {bad[0]} has price {train[bad[0]].price}")


def _mode(values: Iterable[str]) -> str:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def median_price(train: Sequence[ProductFields]) -> float:
    """Median training price (also the fallback price for unparsed answers)."""
    _check_train(train)
    return float(statistics.median(t.price for t in train))


def most_frequent_category(train: Sequence[ProductFields]) -> str:
    """The training split's most frequent category."""
    _check_train(train)
    return _mode(t.category for t in train)


def category_median_prices(train: Sequence[ProductFields]) -> dict[str, float]:
    """Median training price of each category."""
    _check_train(train)
    prices: dict[str, list[float]] = defaultdict(list)
    for t in train:
        prices[t.category].append(t.price)
    return {c: float(statistics.median(p)) for c, p in prices.items()}


def most_frequent_titles(train: Sequence[ProductFields]) -> dict[str, str]:
    """Most frequent training title of each category."""
    _check_train(train)
    titles: dict[str, list[str]] = defaultdict(list)
    for t in train:
        titles[t.category].append(t.title)
    return {c: _mode(v) for c, v in titles.items()}


def _typical(rows: Sequence[ProductFields], names: Iterable[str]) -> dict[str, Any]:
    """Each extra field's most frequent value in ``rows`` (a number's median)."""
    out: dict[str, Any] = {}
    for name in names:
        values = [t.extra[name] for t in rows if t.extra.get(name) is not None]
        if values:
            out[name] = (float(statistics.median(values)) if isinstance(values[0], int | float)
                         else _mode(map(str, values)))
    return out


def constant_baseline(
    train: Sequence[ProductFields], targets: Sequence[ProductFields]
) -> list[ParsedAnswer]:
    """The same answer for every row: median price, top category, top title (and each
    extra field's top value)."""
    answer = dict(
        title=_mode(t.title for t in train),
        category=most_frequent_category(train),
        price=median_price(train),
    )
    extra = _typical(train, train[0].extra)
    return [ParsedAnswer(**answer, extra=dict(extra)) for _ in targets]


def category_oracle_baseline(
    train: Sequence[ProductFields], targets: Sequence[ProductFields]
) -> list[ParsedAnswer]:
    """Given each row's true category: that category's median price and top title."""
    prices, titles = category_median_prices(train), most_frequent_titles(train)
    global_price, global_title = median_price(train), _mode(t.title for t in train)
    names = list(train[0].extra)
    by_category: dict[str, list[ProductFields]] = defaultdict(list)
    for t in train:
        by_category[t.category].append(t)
    extras = {c: _typical(rows, names) for c, rows in by_category.items()}
    overall = _typical(train, names)
    return [
        ParsedAnswer(
            title=titles.get(t.category, global_title),
            category=t.category,
            price=prices.get(t.category, global_price),
            extra=dict(extras.get(t.category, overall)),
        )
        for t in targets
    ]


def compute_baselines(
    train: Sequence[ProductFields], targets: Sequence[ProductFields]
) -> dict[str, list[ParsedAnswer]]:
    """Every baseline's predictions for ``targets``, keyed as in :data:`BASELINE_NAMES`."""
    return {
        "constant": constant_baseline(train, targets),
        "category_oracle": category_oracle_baseline(train, targets),
    }
