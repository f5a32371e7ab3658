"""Catalog schemas: the Burberry source schema, our canonical record, and column presets.

The reference catalog is the Hugging Face dataset ``DBQ/Burberry.Product.prices.United.States``
(3,040 rows). ``productvlm synth`` writes exactly its schema; ``productvlm prepare`` maps any
catalog's columns onto :data:`CANONICAL_FIELDS` with a preset or ``--map`` flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from productvlm.errors import ProductVLMError

BURBERRY_DATASET_ID = "DBQ/Burberry.Product.prices.United.States"

#: Column names and types of the Burberry catalog, in its order.
BURBERRY_SCHEMA = pa.schema(
    [
        ("website_name", pa.string()),
        ("competence_date", pa.string()),
        ("country_code", pa.string()),
        ("currency_code", pa.string()),
        ("brand", pa.string()),
        ("category1_code", pa.string()),
        ("category2_code", pa.string()),
        ("category3_code", pa.string()),
        ("product_code", pa.int64()),
        ("title", pa.string()),
        ("itemurl", pa.string()),
        ("imageurl", pa.string()),
        ("full_price", pa.float64()),
        ("price", pa.float64()),
        ("full_price_eur", pa.float64()),
        ("price_eur", pa.float64()),
        ("flg_discount", pa.int64()),
    ]
)

#: Fields of a prepared record. ``image`` is required on input (a URL or a path);
#: ``category`` is the one the answer carries; category1/2 are kept when the source has them.
CANONICAL_FIELDS = (
    "product_code",
    "title",
    "category",
    "category1",
    "category2",
    "price",
    "currency",
    "image",
)
REQUIRED_FIELDS = ("title", "category", "price", "image")

#: Column presets: canonical field -> source column.
PRESETS: dict[str, dict[str, str]] = {
    # The cookbook's recipe answers with category3_code and full_price.
    "burberry": {
        "product_code": "product_code",
        "title": "title",
        "category": "category3_code",
        "category1": "category1_code",
        "category2": "category2_code",
        "price": "full_price",
        "currency": "currency_code",
        "image": "imageurl",
    },
    # Our own flat layout (what a user's JSONL/CSV most likely looks like).
    "simple": {
        "product_code": "product_code",
        "title": "title",
        "category": "category",
        "price": "price",
        "image": "image",
    },
}


def resolve_column_map(
    columns: Sequence[str],
    preset: str | None = "burberry",
    overrides: Mapping[str, str] | None = None,
    source: str = "catalog",
) -> dict[str, str]:
    """Decide which source column feeds each canonical field, or say clearly why not.

    A preset's optional fields (product_code, category1/2, currency) are skipped when the
    source lacks their column; a column named in ``overrides`` (``--map``) must exist.

    >>> resolve_column_map(["name", "cat", "cost", "url"], None,
    ...                    {"title": "name", "category": "cat", "price": "cost", "image": "url"})
    {'title': 'name', 'category': 'cat', 'price': 'cost', 'image': 'url'}
    """
    overrides = dict(overrides or {})
    if preset is not None and preset not in PRESETS:
        raise ProductVLMError(
            f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}, or 'none' and --map"
        )
    for field in overrides:
        if field not in CANONICAL_FIELDS:
            raise ProductVLMError(
                f"--map {field}=...: unknown field {field!r}; fields: {', '.join(CANONICAL_FIELDS)}"
            )
    present = list(columns)
    mapping: dict[str, str] = {}
    for field, column in (PRESETS[preset] if preset else {}).items():
        if column in present or field in REQUIRED_FIELDS:
            mapping[field] = column
    mapping.update(overrides)
    shown = ", ".join(present) if present else "(none)"
    for field, column in mapping.items():
        if column not in present:
            raise ProductVLMError(
                f"{source}: column {column!r} (for {field}) is missing; columns present: {shown}. "
                f"Pass --map {field}=COLUMN or pick another --preset"
            )
    for field in REQUIRED_FIELDS:
        if field not in mapping:
            raise ProductVLMError(
                f"{source}: no column mapped for {field!r}; pass --map {field}=COLUMN "
                f"(columns present: {shown})"
            )
    return mapping
