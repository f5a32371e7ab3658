"""The faults the sample catalog carries on purpose, so that prepare's handling of real-world
mess is exercised end to end, and wrong listed prices that an audit should find: each fault
row is recorded in faults.csv with its kind.

>>> faults = inject_faults(1000, 0, 0.03, rows)  # doctest: +SKIP
>>> faults[0]  # doctest: +SKIP
(17, '56515821', 'na_url', '')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from productvlm.answer import format_price
from productvlm.evaluation.listings import MISPRICING_KINDS
from productvlm.synth import assortment as A

FAULT_KINDS = ("na_url", "http_404", "not_image", "truncated_jpeg", "price_missing",
               "price_string", "duplicate_code")
# Wrong listed prices (``--mispricing-rate``), the kinds the audit is scored on: the
# photo and every other field stay those of the product; swapped prices differ by 1.5x at
# least (a swap of equal prices is no error).
SWAP_MIN_RATIO = 1.5  # swapped prices differ at least as much as a moderate error does
PRICE_FIELDS = ("full_price", "full_price_eur", "price", "price_eur")
NOT_AN_IMAGE = (b"<!DOCTYPE html>\n<html><head><title>Access Denied</title></head>\n"
                b"<body><h1>Access Denied</h1><p>You don't have permission to access this "
                b"resource.</p></body></html>\n")


def inject_faults(n: int, seed: int, fault_rate: float, rows: list[dict[str, Any]]) -> list[tuple]:
    """Pick fault rows (kinds in turn, so each appears) and apply the catalog-side faults.

    Returns (row, product_code, kind, detail) tuples; image-side faults are applied when
    the images are written. A separate random stream keeps the products identical to a
    clean run with the same seed.
    """
    k = round(fault_rate * n) if n > 1 else 0
    if k == 0:
        return []
    rng = np.random.default_rng([seed, 1])
    picked = sorted(int(x) + 1 for x in rng.choice(n - 1, min(k, n - 1), replace=False))
    order = rng.permutation(len(picked))
    kinds = {picked[j]: FAULT_KINDS[rank % len(FAULT_KINDS)] for rank, j in enumerate(order)}
    faults = []
    for row in picked:
        kind, r, detail = kinds[row], rows[row], ""
        if kind == "na_url":
            r["imageurl"] = "N.A."
        elif kind == "price_missing":
            r["full_price"] = r["full_price_eur"] = None
        elif kind == "price_string":
            detail = f"catalog.csv full_price {format_price(r['full_price'])!r}; Parquet keeps it"
        elif kind == "duplicate_code":
            clean = [j for j in range(row) if j not in kinds]
            src = clean[int(rng.integers(len(clean)))]
            cat2 = A.MERCH_CATEGORY2[int(rng.integers(len(A.MERCH_CATEGORY2)))]
            rows[row] = {**rows[src], "category2_code": cat2}
            detail = f"same product as row {src}"
        elif kind == "http_404":
            detail = "image file not written"
        faults.append((row, rows[row]["product_code"], kind, detail))
    return faults


def inject_mispricing(n: int, seed: int, rate: float, rows: list[dict[str, Any]],
                      taken: set[int]) -> list[tuple]:
    """Give ``rate`` of the rows (not those in ``taken``, nor row 0) a wrong listed price,
    kinds in turn; returns (row, product_code, kind, detail) tuples.

    Its own random stream: the products, and the other faults, are those of a run without it.
    """
    k = round(rate * n) if n > 2 else 0
    free = [i for i in range(1, n) if i not in taken and rows[i]["full_price"] is not None]
    if k == 0 or len(free) < 2:
        return []
    rng = np.random.default_rng([seed, 2])
    order = [free[int(j)] for j in rng.permutation(len(free))]
    used: set[int] = set()
    out: list[tuple] = []
    turn = 0
    for row in order:
        if len(used) >= k:
            break
        if row in used:
            continue
        kind = MISPRICING_KINDS[turn % len(MISPRICING_KINDS)]
        turn += 1
        r = rows[row]
        if kind == "price_swap":
            # a swap between two products of about the same price would not be an error
            others = [j for j in order if j not in used and j != row
                      and rows[j]["category3_code"] != r["category3_code"]
                      and max(rows[j]["full_price"], r["full_price"])
                      >= SWAP_MIN_RATIO * min(rows[j]["full_price"], r["full_price"])]
            if not others:
                continue
            j = others[0]
            detail = (f"full_price {r['full_price']:.2f} swapped with row {j} "
                      f"({rows[j]['category3_code']}, {rows[j]['full_price']:.2f})")
            back = (f"full_price {rows[j]['full_price']:.2f} swapped with row {row} "
                    f"({r['category3_code']}, {r['full_price']:.2f})")
            for f in PRICE_FIELDS:
                r[f], rows[j][f] = rows[j][f], r[f]
            out += [(row, r["product_code"], kind, detail), (j, rows[j]["product_code"], kind,
                                                              back)]
            used |= {row, j}
            continue
        if kind == "price_decimal_slip":
            factor = 10.0 if rng.random() < 0.5 else 0.1
        else:
            factor = 0.6 if rng.random() < 0.5 else 1.5
        before = r["full_price"]
        for f in PRICE_FIELDS:
            if r[f] is not None:
                r[f] = round(r[f] * factor, 2)
        out.append((row, r["product_code"], kind,
                    f"full_price {before:.2f} -> {r['full_price']:.2f} (x{factor:g})"))
        used.add(row)
    return sorted(out)


def damaged(encode: Callable[[], bytes], kind: str, seed: int) -> bytes:
    """A photo's file content for its fault ``kind``: an HTML error page, a JPEG cut short
    (30-70 % kept, by ``seed``), or the JPEG ``encode`` makes."""
    if kind == "not_image":
        return NOT_AN_IMAGE
    data = encode()
    if kind == "truncated_jpeg":
        data = data[: len(data) * (30 + seed % 40) // 100]
    return data
