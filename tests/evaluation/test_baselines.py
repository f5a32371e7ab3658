"""Baselines fitted on a toy training split, scored through the same metrics."""

from __future__ import annotations

import pytest

from productvlm.answer import ProductFields as T
from productvlm.errors import ProductVLMError
from productvlm.evaluation.baselines import (
    BASELINE_NAMES,
    category_median_prices,
    category_oracle_baseline,
    compute_baselines,
    constant_baseline,
    fields_from_records,
    median_price,
    most_frequent_category,
    most_frequent_titles,
)
from productvlm.evaluation.metrics import all_metrics

TRAIN = [
    T("Lola Bag", "BAGS", 2000.0),
    T("Lola Bag", "BAGS", 2200.0),
    T("Pocket Bag", "BAGS", 1000.0),
    T("Trench Coat", "COATS", 2500.0),
    T("Car Coat", "COATS", 1500.0),
    T("Check Scarf", "SCARVES", 500.0),
]
TEST = [
    T("Lola Bag", "BAGS", 2100.0),
    T("Trench Coat", "COATS", 2000.0),
    T("Silk Tie", "TIES", 200.0),  # a category never seen in training
]


def test_training_statistics():
    assert median_price(TRAIN) == 1750.0  # (1500 + 2000) / 2
    assert most_frequent_category(TRAIN) == "BAGS"
    assert category_median_prices(TRAIN) == {"BAGS": 2000.0, "COATS": 2000.0, "SCARVES": 500.0}
    # COATS ties 1-1: alphabetical tie-break, independent of row order
    assert most_frequent_titles(TRAIN) == {
        "BAGS": "Lola Bag",
        "COATS": "Car Coat",
        "SCARVES": "Check Scarf",
    }
    assert most_frequent_titles(TRAIN[::-1]) == most_frequent_titles(TRAIN)


def test_constant_baseline_answers_the_same_for_every_row():
    preds = constant_baseline(TRAIN, TEST)
    assert len(preds) == 3 and all(p.ok for p in preds)
    assert {(p.title, p.category, p.price) for p in preds} == {("Lola Bag", "BAGS", 1750.0)}


def test_category_oracle_uses_the_true_category_and_falls_back_when_unseen():
    preds = category_oracle_baseline(TRAIN, TEST)
    assert [(p.title, p.category, p.price) for p in preds] == [
        ("Lola Bag", "BAGS", 2000.0),
        ("Car Coat", "COATS", 2000.0),
        ("Lola Bag", "TIES", 1750.0),  # unseen category: global title and median
    ]


def test_baselines_go_through_the_same_metrics():
    preds = compute_baselines(TRAIN, TEST)
    assert list(preds) == list(BASELINE_NAMES)
    fallback = median_price(TRAIN)
    const = all_metrics(TEST, preds["constant"], fallback_price=fallback)
    oracle = all_metrics(TEST, preds["category_oracle"], fallback_price=fallback)
    assert const["price_mae"] == pytest.approx((350 + 250 + 1550) / 3)
    assert const["category_accuracy"] == pytest.approx(1 / 3)
    assert const["title_exact_match"] == pytest.approx(1 / 3)
    assert oracle["price_mae"] == pytest.approx((100 + 0 + 1550) / 3)
    assert oracle["category_accuracy"] == 1.0 and oracle["category_macro_f1"] == 1.0
    assert oracle["parse_rate"] == 1.0


def test_fields_from_records_and_bad_rows():
    rows = [{"title": "Lola Bag", "category": "BAGS", "price": "2290", "image": "x.jpg"}]
    assert fields_from_records(rows) == [T("Lola Bag", "BAGS", 2290.0)]
    with pytest.raises(ProductVLMError, match="row 1: needs title, category"):
        fields_from_records(rows + [{"title": "x", "price": 1.0}])
    with pytest.raises(ProductVLMError, match="training split is empty"):
        median_price([])
    with pytest.raises(ProductVLMError, match="training row 0 has price"):
        median_price([T("x", "y", -1.0)])
