"""Exact metric values on hand-made cases, including unparsed answers."""

from __future__ import annotations

import math

import pytest

from productvlm.answer import ParsedAnswer, ProductFields, parse_answer
from productvlm.errors import ProductVLMError
from productvlm.evaluation.metrics import (
    UNPARSED,
    all_metrics,
    category_metrics,
    chrf,
    confusion_matrix,
    macro_f1,
    parse_metrics,
    per_category,
    price_metrics,
    row_scores,
    title_metrics,
    token_f1,
)

T = ProductFields
P = ParsedAnswer
BAD = ParsedAnswer(error="answer does not match")


def _targets(prices):
    return [T(f"item {i}", "BAGS", p) for i, p in enumerate(prices)]


def _preds(prices):
    return [BAD if p is None else P(f"item {i}", "BAGS", p) for i, p in enumerate(prices)]


def test_price_metrics_with_unparsed_row_filled_by_fallback():
    targets = _targets([100.0, 200.0, 400.0, 50.0])
    preds = _preds([110.0, 150.0, None, 50.0])
    m = price_metrics(targets, preds, fallback_price=120.0)
    # abs errors 10, 50, 280 (fallback 120 vs 400), 0; APE 0.1, 0.25, 0.7, 0
    assert m["price_mae"] == pytest.approx(85.0)
    assert m["price_mape"] == pytest.approx(0.2625)
    assert m["price_median_ape"] == pytest.approx(0.175)
    assert m["price_within_10pct"] == 0.5
    assert m["price_within_25pct"] == 0.75
    logs = [(math.log1p(p) - math.log1p(t)) for p, t in [(110, 100), (150, 200), (120, 400)]]
    assert m["price_rmse_log"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 4))
    assert (m["price_n_scored"], m["price_n_fallback"]) == (4, 1)


def test_price_metrics_without_fallback_leave_unparsed_rows_out():
    m = price_metrics(_targets([100.0, 200.0, 400.0]), _preds([110.0, 150.0, None]))
    assert m["price_mae"] == pytest.approx(30.0)
    assert (m["price_n_scored"], m["price_n_fallback"]) == (2, 0)


def test_price_metrics_nothing_readable_and_no_fallback_is_nan_not_a_crash():
    m = price_metrics(_targets([100.0]), [BAD])
    assert math.isnan(m["price_mae"]) and m["price_n_scored"] == 0


def test_identical_predictions_are_perfect():
    targets = [T("Medium Lola Bag", "BAGS", 2290.0), T("Trench Coat", "COATS", 1990.0)]
    preds = [P(t.title, t.category, t.price) for t in targets]
    m = all_metrics(targets, preds, fallback_price=1.0)
    assert m["price_mae"] == 0 and m["price_mape"] == 0 and m["price_rmse_log"] == 0
    assert m["price_within_10pct"] == 1 and m["price_within_25pct"] == 1
    assert m["category_accuracy"] == 1 and m["category_macro_f1"] == 1
    assert m["title_exact_match"] == 1 and m["title_token_f1"] == 1
    assert m["title_chrf"] == pytest.approx(100.0)
    assert m["parse_rate"] == 1 and m["n"] == 2 and m["n_unparsed"] == 0


def test_zero_price_prediction_counts_as_a_prediction():
    m = price_metrics(_targets([100.0, 300.0]), _preds([0.0, 0.0]), fallback_price=999.0)
    assert m["price_mae"] == 200.0 and m["price_mape"] == 1.0 and m["price_within_25pct"] == 0
    expected = math.sqrt((math.log1p(100) ** 2 + math.log1p(300) ** 2) / 2)
    assert m["price_rmse_log"] == pytest.approx(expected)
    assert m["price_n_fallback"] == 0


def test_negative_or_nan_price_is_unreadable():
    preds = [P("a", "BAGS", -5.0), P("b", "BAGS", float("nan"))]
    m = price_metrics(_targets([100.0, 100.0]), preds, fallback_price=100.0)
    assert m["price_mae"] == 0 and m["price_n_fallback"] == 2


def test_macro_f1_with_absent_and_spurious_classes():
    # a: TP1 FN1 -> 2/3; b: TP1 FN1 -> 2/3; c predicted, never true -> 0; None is a miss only
    assert macro_f1(["a", "a", "b", "b"], ["a", "c", None, "b"]) == pytest.approx(4 / 9)
    # b is true but never predicted -> 0; a: TP1 FP1 -> 2/3
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(1 / 3)
    assert macro_f1(["a"], [None]) == 0.0


def test_category_metrics_count_unparsed_as_wrong_and_ignore_case():
    targets = [T("x", "BAGS", 1.0), T("x", "BAGS", 1.0), T("x", "Coats", 1.0), T("x", "Coats", 1.0)]
    preds = [P("x", " bags", 1.0), P("x", "Scarves", 1.0), BAD, P("x", "COATS", 1.0)]
    m = category_metrics(targets, preds)
    assert m == {"category_accuracy": 0.5, "category_macro_f1": pytest.approx(4 / 9)}


def test_partially_parsed_answer_is_scored_on_the_fields_it_has():
    target = [T("Lola Bag", "BAGS", 100.0)]
    pred = [parse_answer("Product: Lola Bag, Category: BAGS, Full Price: N.A.")]
    assert not pred[0].ok
    m = all_metrics(target, pred, fallback_price=80.0)
    assert m["parse_rate"] == 0 and m["category_accuracy"] == 1 and m["title_exact_match"] == 1
    assert m["price_mae"] == 20.0 and m["price_n_fallback"] == 1


def test_category_levels_are_pluggable():
    targets = [ProductFields("a", "BAGS", 1.0, {"category1": "WOMEN"}),
               ProductFields("b", "BAGS", 1.0, {"category1": "MEN"})]
    preds = [ParsedAnswer("a", "BAGS", 1.0, extra={"category1": "WOMEN"}),
             ParsedAnswer("b", "BAGS", 1.0)]
    m = all_metrics(targets, preds, category_fields=("category", "category1"))
    assert m["category_accuracy"] == 1 and m["category1_accuracy"] == 0.5
    assert m["category1_macro_f1"] == pytest.approx(0.5)  # WOMEN 1, MEN 0


def test_title_metrics():
    targets = [T("Medium Lola Bag", "c", 1.0), T("Lola Bag", "c", 1.0), T("Trench Coat", "c", 1.0)]
    preds = [P("  medium LOLA  bag", "c", 1.0), P("Medium Lola Bag", "c", 1.0), BAD]
    m = title_metrics(targets, preds)
    assert m["title_exact_match"] == pytest.approx(1 / 3)
    assert m["title_token_f1"] == pytest.approx((1 + 0.8 + 0) / 3)


def test_token_f1_squad_rules():
    assert token_f1("Medium Lola Bag", "Lola Bag") == pytest.approx(0.8)
    assert token_f1("The Trench!", "trench coat") == pytest.approx(2 / 3)  # article, punctuation
    assert token_f1(None, "Lola") == 0.0 and token_f1("the", "a") == 1.0  # both empty


def test_chrf_matches_sacrebleu():
    # reference values from sacrebleu 2.5.1: CHRF().corpus_score(hyps, [refs]).score
    hyps = ["Medium Lola Bag", "Check Cotton Shirt", ""]
    refs = ["Lola Bag", "Vintage Check Cotton Shirt", "Trench Coat"]
    assert chrf(hyps, refs) == pytest.approx(58.11674207603099, abs=1e-9)
    hyps = ["ab", "The Kensington Heritage Trench Coat"]
    assert chrf(hyps, ["abc", "Kensington Trench"]) == pytest.approx(64.243184315661, abs=1e-9)
    assert chrf([None], ["abc"]) == 0.0 and chrf(["x"], ["Lola Bag"]) == 0.0


def test_parse_metrics():
    m = parse_metrics(_targets([1.0, 2.0, 3.0, 4.0]), _preds([1.0, None, None, 4.0]))
    assert m == {"n": 4, "n_unparsed": 2, "parse_rate": 0.5}


def test_bad_input_raises_clear_errors():
    with pytest.raises(ProductVLMError, match="3 targets but 2 predictions"):
        all_metrics(_targets([1.0, 2.0, 3.0]), _preds([1.0, 2.0]))
    with pytest.raises(ProductVLMError, match="empty"):
        all_metrics([], [])
    with pytest.raises(ProductVLMError, match="target row 1 has price 0.0"):
        price_metrics(_targets([1.0, 0.0]), _preds([1.0, 1.0]))


def test_confusion_matrix_has_an_unparsed_column():
    targets = [T("x", c, 1.0) for c in ["BAGS", "BAGS", "BAGS", "Coats"]]
    preds = [P("x", "bags", 1.0), P("x", "Scarves", 1.0), BAD, P("x", "BAGS", 1.0)]
    rows, cols, matrix = confusion_matrix(targets, preds)
    assert rows == ["BAGS", "Coats"]
    assert cols == ["BAGS", "Coats", "Scarves", UNPARSED]
    assert matrix == [[1, 0, 1, 1], [1, 0, 0, 0]]


def test_per_category_breakdown():
    targets = [T("x y", "BAGS", 100.0), T("z", "BAGS", 200.0), T("d", "Coats", 1000.0)]
    preds = [P("x", "BAGS", 100.0), BAD, P("d", "BAGS", 1100.0)]
    out = per_category(targets, preds, fallback_price=150.0)
    assert list(out) == ["BAGS", "Coats"]
    bags, coats = out["BAGS"], out["Coats"]
    assert bags["n"] == 2 and bags["accuracy"] == 0.5
    assert bags["f1"] == pytest.approx(2 * 1 / (2 + 2))  # TP1, 2 predicted, 2 true
    assert bags["price_mae"] == pytest.approx(25.0)  # 0 and |150-200|
    assert bags["title_token_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert coats == {
        "n": 1,
        "accuracy": 0.0,
        "f1": 0.0,
        "price_mae": 100.0,
        "price_median_ape": 0.1,
        "price_within_25pct": 1.0,
        "title_token_f1": 1.0,
    }


def test_row_scores():
    s = row_scores(T("Lola Bag", "BAGS", 200.0), BAD, fallback_price=100.0)
    assert s == {
        "price_ape": 0.5,
        "category_correct": False,
        "title_exact": False,
        "title_token_f1": 0.0,
    }
    assert row_scores(T("a", "B", 1.0), BAD)["price_ape"] is None
