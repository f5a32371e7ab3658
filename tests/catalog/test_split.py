"""The split: groups never cross splits, categories are stratified, the seed decides."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from productvlm.catalog.split import SPLITS, assign_splits, check_fractions, group_rows


def _catalog(n: int = 600, seed: int = 1):
    """Codes with repeats, shared images across different codes, skewed categories."""
    rng = random.Random(seed)
    cats = ["BAGS"] * 50 + ["SHOES"] * 30 + ["SCARVES"] * 15 + ["RARE"] * 1
    codes = [str(rng.randrange(n // 2)) for _ in range(n)]  # ~ half the codes repeat
    categories = [rng.choice(cats) for _ in range(n)]
    shas = [f"sha{rng.randrange(n)}" if rng.random() < 0.3 else f"u{i}" for i in range(n)]
    return codes, categories, shas


def test_no_code_or_image_in_two_splits():
    codes, cats, shas = _catalog()
    splits = assign_splits(codes, cats, shas, seed=3)
    for key in (codes, shas):
        seen: dict[str, set[str]] = defaultdict(set)
        for k, s in zip(key, splits, strict=True):
            seen[k].add(s)
        assert all(len(v) == 1 for v in seen.values())


def test_stratified_by_category_and_close_to_fractions():
    n = 3000
    codes = [str(i) for i in range(n)]
    cats = [("BAGS", "SHOES", "SCARVES")[i % 3] for i in range(n)]
    splits = assign_splits(codes, cats, [None] * n, (0.8, 0.1, 0.1), seed=0)
    for cat in ("BAGS", "SHOES", "SCARVES"):
        c = Counter(s for s, k in zip(splits, cats, strict=True) if k == cat)
        assert (c["train"], c["validation"], c["test"]) == (800, 100, 100)


def test_groups_respect_fractions_roughly():
    codes, cats, shas = _catalog(n=2000)
    c = Counter(assign_splits(codes, cats, shas, seed=0))
    assert 0.74 < c["train"] / 2000 < 0.86
    assert 0.06 < c["validation"] / 2000 < 0.14 and 0.06 < c["test"] / 2000 < 0.14


def test_rare_category_stays_in_train():
    codes = [str(i) for i in range(23)]
    cats = ["BAGS"] * 20 + ["RARE"] * 3
    splits = assign_splits(codes, cats, [None] * 23)
    assert splits[20:] == ["train"] * 3
    assert Counter(splits[:20]) == {"train": 16, "validation": 2, "test": 2}


def test_deterministic_and_seed_matters():
    codes, cats, shas = _catalog()
    a = assign_splits(codes, cats, shas, seed=7)
    assert a == assign_splits(list(codes), list(cats), list(shas), seed=7)
    assert a != assign_splits(codes, cats, shas, seed=8)


def test_zero_fraction_split_stays_empty():
    codes, cats, shas = _catalog()
    c = Counter(assign_splits(codes, cats, shas, (0.9, 0.0, 0.1)))
    assert c["validation"] == 0 and c["test"] > 0
    assert set(c) <= set(SPLITS)


def test_group_rows_is_transitive_and_skips_empty_keys():
    # 0-1 share a code, 1-2 share an image: all three together; empty code joins nothing
    assert group_rows(["a", "a", "b", "", ""], ["x", "y", "y", None, None]) == [0, 0, 0, 3, 4]


@pytest.mark.parametrize("bad", [(0.8, 0.1), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.1, -0.1, 0)])
def test_bad_fractions(bad):
    with pytest.raises(ValueError, match="fractions"):
        check_fractions(bad)
