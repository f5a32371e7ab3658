"""The words' price model and the audit's judgment by photo and words together, on synthetic
listings whose price the title decides (item x material) and whose photo gives a loose belief.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from productvlm.calibration import Calibration, Signals
from productvlm.evaluation.listings import judge, roc_auc
from productvlm.wordprice import WordPrice

GRID = np.round(np.geomspace(20, 20000, 120), 0)
ITEMS = {"Tote": ("BAGS", 900.0), "Trench Coat": ("COATS", 2000.0), "Scarf": ("SCARVES", 400.0),
         "Wallet": ("SMALL LEATHER GOODS", 450.0)}
MATERIALS = {"Cotton": 1.0, "Wool": 1.3, "Leather": 1.8, "Cashmere": 2.4, "Silk": 1.6}
COLOURS = ("Beige", "Black", "Navy", "Red")


def listing(rng: np.random.Generator) -> tuple[str, str, float]:
    item = list(ITEMS)[rng.integers(len(ITEMS))]
    material = list(MATERIALS)[rng.integers(len(MATERIALS))]
    title = f"{COLOURS[rng.integers(4)]} {material} {item}"
    category, base = ITEMS[item]
    return title, category, base * MATERIALS[material] * math.exp(rng.normal(0, 0.05))


def photo_belief(rng: np.random.Generator, price: float) -> Signals:
    """A photo's price distribution: a wide bump near the true price (it sees the item, not
    the material)."""
    guess = price * math.exp(rng.normal(0, 0.25))
    lp = -0.5 * ((np.log(GRID) - math.log(guess)) / 0.35) ** 2
    return Signals(price_logprobs=lp, given_logprobs=lp, answer_logprob=-0.3,
                   features=rng.normal(0, 1, 6))


@pytest.fixture(scope="module")
def catalog() -> dict:
    rng = np.random.default_rng(0)
    train = [listing(rng) for _ in range(600)]
    val = [listing(rng) for _ in range(300)]
    sigs = [photo_belief(rng, p) for _, _, p in val]
    truths = [SimpleNamespace(title=t, category=c, price=p) for t, c, p in val]
    cal = Calibration.fit(GRID, sigs, truths, truths, rng.normal(0, 1, (600, 6)),
                          [c for _, c, _ in train], None,
                          ([t for t, _, _ in train], [p for _, _, p in train]))
    return {"train": train, "cal": cal, "rng": rng}


def test_a_training_listing_is_priced_by_a_model_that_did_not_see_it() -> None:
    titles = [f"Plain Tote {i}" for i in range(40)] + ["Golden Zebra Tote"]
    prices = [1000.0] * 40 + [90000.0]
    wp = WordPrice.fit(titles, ["BAGS"] * 41, prices)
    zebra = math.exp(wp.predict(["Golden Zebra Tote"], ["BAGS"])[0])
    assert zebra < 3000, zebra  # its own price (90,000) was not learned for it
    # a new listing with the same words is priced by the whole model, which learned them
    assert math.exp(wp.predict(["Golden Zebra Tote Large"], ["BAGS"])[0]) > zebra


def test_words_learn_what_the_title_says(catalog: dict) -> None:
    wp = catalog["cal"].words
    cheap, dear = np.exp(wp.predict(["Black Cotton Scarf", "Black Cashmere Trench Coat"],
                                    ["SCARVES", "COATS"]))
    assert 300 < cheap < 550 and 3800 < dear < 6000, (cheap, dear)


def test_the_flag_level_holds_and_the_words_sharpen_moderate_errors(catalog: dict) -> None:
    cal, rng = catalog["cal"], np.random.default_rng(5)
    rows = [listing(rng) for _ in range(1500)]
    clean_flags, scores = [], {"both": [], "photo": []}
    kinds = []
    for i, (title, category, price) in enumerate(rows):
        sig = photo_belief(rng, price)
        listed = price * (1.5 if i % 10 == 0 else 1.0)
        v = judge(sig, listed, cal, title=title, category=category, flag_level=0.99)
        kinds.append(i % 10 == 0)
        if i % 10:
            clean_flags.append(v.flagged)
        scores["both"].append(v.surprise)
        scores["photo"].append(-v.p_photo)
    rate = float(np.mean(clean_flags))
    # 1,350 clean rows at a 1% level: binomial sd 0.27 points; conformal adds up to 1/301
    assert rate <= 0.01 + 3 * 0.0027 + 1 / 301, rate
    both, photo = roc_auc(scores["both"], kinds), roc_auc(scores["photo"], kinds)
    assert both > photo + 0.1 and both > 0.9, (both, photo)


def test_why_names_the_evidence_that_disagrees(catalog: dict) -> None:
    cal, rng = catalog["cal"], np.random.default_rng(9)
    title, category, price = "Beige Cashmere Trench Coat", "COATS", 2000 * 2.4
    sig = photo_belief(rng, price)
    v = judge(sig, price / 10, cal, title=title, category=category)
    assert v.flagged and "both disagree" in v.why, v.why
    assert v.words_low is not None and v.words_low <= price <= v.words_high
    flat = Signals(given_logprobs=np.zeros(len(GRID)), price_logprobs=np.zeros(len(GRID)))
    v = judge(flat, price / 2.5, cal, title=title, category=category)
    assert v.flagged and "the words disagree" in v.why, v.why


def test_words_read_back_from_a_saved_calibration(catalog: dict, tmp_path) -> None:
    cal = catalog["cal"]
    back = Calibration.load(cal.save(tmp_path / "calibration"))
    titles, cats = ["Navy Wool Tote", "Red Silk Scarf"], ["BAGS", "SCARVES"]
    assert np.allclose(back.words.predict(titles, cats), cal.words.predict(titles, cats))
    assert np.array_equal(back.arrays["given_scores"], cal.arrays["given_scores"])
    sig = photo_belief(np.random.default_rng(1), 900.0)
    assert judge(sig, 1500.0, back, title="Navy Cotton Tote", category="BAGS") == judge(
        sig, 1500.0, cal, title="Navy Cotton Tote", category="BAGS")
