"""The faults the sample catalog carries on purpose, so that prepare's handling of real-world
mess is exercised end to end: each fault row is recorded in faults.csv with its kind.

>>> faults = inject_faults(1000, 0, 0.03, rows)  # doctest: +SKIP
>>> faults[0]  # doctest: +SKIP
(17, '56515821', 'na_url', '')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from productvlm.prompts import format_price
from productvlm.synth import assortment as A

FAULT_KINDS = ("na_url", "http_404", "not_image", "truncated_jpeg", "price_missing",
               "price_string", "duplicate_code")
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


def damaged(encode: Callable[[], bytes], kind: str, seed: int) -> bytes:
    """A photo's file content for its fault ``kind``: an HTML error page, a JPEG cut short
    (30-70 % kept, by ``seed``), or the JPEG ``encode`` makes."""
    if kind == "not_image":
        return NOT_AN_IMAGE
    data = encode()
    if kind == "truncated_jpeg":
        data = data[: len(data) * (30 + seed % 40) // 100]
    return data
