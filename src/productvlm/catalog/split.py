"""Group-aware, category-stratified train/validation/test split, deterministic by seed.

Rows are first joined into groups that must never be separated: rows that share a product
code, and rows whose images are byte-identical (same sha256), transitively (a union-find).
A leak through either would let the model be tested on a photo it trained on.

Each group is labelled with its most common category; within each category the groups are
shuffled with the seed, ordered largest first, and each is given to the split that is
furthest below its target share of that category's rows. So every category is split in the
requested proportions as closely as whole groups allow, and a rare category (fewer rows than
it takes to give validation or test a whole row, e.g. under 10 rows at 0.8/0.1/0.1) stays
in train, where the model can at least learn it.

>>> assign_splits(["a", "a", "b", "c"], ["BAGS"] * 4, [None] * 4, (0.5, 0.25, 0.25), seed=0)
['train', 'train', 'test', 'validation']
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from productvlm.prepared import SPLITS


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # smallest row is the root: deterministic


def group_rows(codes: Sequence[str], shas: Sequence[str | None]) -> list[int]:
    """Group id (the group's first row) of each row; empty codes and missing shas join nothing.

    >>> group_rows(["a", "b", "c", "a"], ["x", "y", "y", None])
    [0, 1, 1, 0]
    """
    uf = _UnionFind(len(codes))
    first: dict[tuple[str, str], int] = {}
    for i, (code, sha) in enumerate(zip(codes, shas, strict=True)):
        for key in (("code", code), ("sha", sha)):
            if not key[1]:
                continue
            j = first.setdefault(key, i)
            if j != i:
                uf.union(i, j)
    return [uf.find(i) for i in range(len(codes))]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, validation, test) fractions: three non-negative numbers summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise ValueError(f"split fractions must sum to 1 with train > 0, got {fractions}")
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def assign_splits(
    codes: Sequence[str],
    categories: Sequence[str],
    shas: Sequence[str | None],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> list[str]:
    """The split name of each row; see the module docstring for the rules.

    Same inputs and seed give the same answer on every machine (``random.Random`` is
    deterministic and nothing depends on hash order).
    """
    fr = check_fractions(fractions)
    n = len(codes)
    if not (len(categories) == len(shas) == n):
        raise ValueError("codes, categories and shas must have the same length")
    group_of = group_rows(codes, shas)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_of):
        members[g].append(i)

    by_category: dict[str, list[int]] = defaultdict(list)
    for g, rows in members.items():
        counts = Counter(categories[i] for i in rows)
        label = min(counts, key=lambda c: (-counts[c], c))  # most common, ties by name
        by_category[label].append(g)

    open_splits = [k for k in range(3) if fr[k] > 0]
    rng = random.Random(seed)
    split_of_group: dict[int, int] = {}
    for category in sorted(by_category):
        groups = sorted(by_category[category])
        rng.shuffle(groups)
        groups.sort(key=lambda g: -len(members[g]))  # stable: ties keep the shuffled order
        total = sum(len(members[g]) for g in groups)
        target = [f * total for f in fr]
        assigned = [0, 0, 0]
        for g in groups:
            size = len(members[g])
            # the split left furthest below its target after taking this group (half of it
            # counted, so a group goes where it overshoots least); ties go to train
            s = max(open_splits, key=lambda k: (target[k] - assigned[k] - size / 2, -k))
            split_of_group[g] = s
            assigned[s] += size
    return [SPLITS[split_of_group[g]] for g in group_of]
