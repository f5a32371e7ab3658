"""calibration/ on synthetic signals with known answers: conformal coverage holds at every
level, the category probability and typicality behave, a saved calibration reads back the same.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from productvlm.calibration import Calibration, Signals, central_band, conformal_quantile
from productvlm.errors import ProductVLMError

GRID = np.round(np.geomspace(20, 5000, 60), 0)
CATS = ["BAGS", "COATS", "SCARVES"]
CENTERS = {"BAGS": 1200.0, "COATS": 2400.0, "SCARVES": 500.0}


def draw(rng: np.random.Generator, n: int, wrong: float = 0.1) -> list[tuple]:
    """(signals, answer, truth) triples: a model whose price belief is a discrete bump around
    its guess, and whose guess is off by a random factor (and in another category sometimes)."""
    log_grid = np.log(GRID)
    out = []
    for _ in range(n):
        cat = CATS[rng.integers(3)]
        true = CENTERS[cat] * math.exp(rng.normal(0, 0.25))
        guess_cat = CATS[rng.integers(3)] if rng.random() < wrong else cat
        guess = true * math.exp(rng.normal(0, 0.15)) * (CENTERS[guess_cat] / CENTERS[cat])
        logprobs = -0.5 * ((log_grid - math.log(guess)) / 0.08) ** 2
        feats = np.zeros(8)
        feats[CATS.index(cat)] = 3.0
        feats += rng.normal(0, 1, 8)
        sig = Signals(price_logprobs=logprobs, answer_logprob=float(rng.normal(-0.5, 0.2)),
                      features=feats, given_logprobs=logprobs)
        out.append((sig, SimpleNamespace(category=guess_cat, price=guess),
                    SimpleNamespace(category=cat, price=true)))
    return out


@pytest.fixture(scope="module")
def fitted() -> Calibration:
    rng = np.random.default_rng(0)
    val = draw(rng, 400)
    train_feats = np.stack([np.eye(8)[i % 3] * 3 + rng.normal(0, 1, 8) for i in range(300)])
    train_cats = [CATS[i % 3] for i in range(300)]
    return Calibration.fit(GRID, [v[0] for v in val], [v[1] for v in val], [v[2] for v in val],
                           train_feats, train_cats)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_intervals_cover_new_rows_at_the_stated_level(fitted: Calibration, level: float) -> None:
    test = draw(np.random.default_rng(1), 2000)
    inside = []
    for sig, answer, truth in test:
        p = fitted.uncertainty(sig, answer.category, level).category_prob
        low, high = fitted.interval(sig.price_logprobs, level, p)
        inside.append(low <= truth.price <= high)
    coverage = float(np.mean(inside))
    # 2,000 rows: the binomial noise is ~1 point; conformal adds at most 1/(n+1) above
    assert level - 0.03 <= coverage <= level + 0.04, (level, coverage)


def test_a_doubtful_category_widens_the_interval(fitted: Calibration) -> None:
    sig = draw(np.random.default_rng(2), 1)[0][0]
    sure, unsure = (fitted.interval(sig.price_logprobs, 0.8, p) for p in (1.0, 0.1))
    if fitted.doubt_weight > 0:
        assert unsure[1] - unsure[0] > sure[1] - sure[0]
    higher = fitted.interval(sig.price_logprobs, 0.95, 1.0)
    assert higher[0] <= sure[0] and higher[1] >= sure[1]  # a higher level is never narrower


def test_category_probability_and_typicality(fitted: Calibration) -> None:
    rng = np.random.default_rng(3)
    rows = draw(rng, 300, wrong=0.0)
    probs = fitted.category_probs(np.stack([r[0].features for r in rows]))
    assert np.allclose(probs.sum(-1), 1)
    accuracy = np.mean([CATS[int(p.argmax())] == r[2].category for p, r in zip(probs, rows,
                                                                                 strict=True)])
    assert accuracy > 0.8
    typical = fitted.typicality(np.stack([r[0].features for r in rows]))
    strange = fitted.typicality(rng.normal(0, 1, (20, 8)) * 40)
    assert np.median(typical) == 1.0 and strange.max() < 0.05


def test_confidence_falls_for_a_picture_unlike_the_training_photos(fitted: Calibration) -> None:
    sig = draw(np.random.default_rng(4), 1, wrong=0.0)[0][0]
    usual = fitted.uncertainty(sig, "BAGS", 0.8).confidence
    sig.features = sig.features * 50
    assert fitted.uncertainty(sig, "BAGS", 0.8).confidence < 0.05 < usual


def test_surprise_of_a_listed_price(fitted: Calibration) -> None:
    sig = draw(np.random.default_rng(5), 1)[0][0]
    lo, hi = (math.exp(x) for x in central_band(sig.given_logprobs, fitted.log_grid, 0.5))
    inside, p_inside, photo = fitted.surprise(sig.given_logprobs, math.sqrt(lo * hi))
    tenfold, p_far, _ = fitted.surprise(sig.given_logprobs, hi * 10)
    assert inside == photo == 0.0 and p_inside == 1.0
    assert tenfold == pytest.approx(math.log(10), abs=1e-6) and p_far < 0.01


def test_saved_calibration_reads_back_the_same(fitted: Calibration, tmp_path) -> None:
    loaded = Calibration.load(fitted.save(tmp_path / "cal"))
    sig = draw(np.random.default_rng(6), 1)[0][0]
    assert loaded.uncertainty(sig, "COATS", 0.8) == fitted.uncertainty(sig, "COATS", 0.8)
    assert loaded.given_margins == fitted.given_margins
    (tmp_path / "cal" / "calibration.json").write_text("{")
    with pytest.raises(ProductVLMError, match="unreadable calibration"):
        Calibration.load(tmp_path / "cal")


def test_too_few_rows_and_bad_levels_are_clear_errors(fitted: Calibration) -> None:
    rows = draw(np.random.default_rng(7), 5)
    with pytest.raises(ProductVLMError, match="at least 10 validation rows"):
        Calibration.fit(GRID, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                        np.zeros((6, 8)), CATS * 2)
    with pytest.raises(ProductVLMError, match="interval level 0.3"):
        fitted.margin(0.3)
    assert conformal_quantile(np.arange(9.0), 0.95) == math.inf  # 9 rows cannot give 95%
