"""Catalog schemas: our canonical record and the column presets that map a source onto it.

The reference catalog is the Hugging Face dataset ``DBQ/Burberry.Product.prices.United.States``
(3,040 rows), read through the ``burberry`` preset; ``productvlm prepare`` maps any
catalog's columns onto :data:`CANONICAL_FIELDS` with a preset or ``--map`` flags
(:func:`resolve_column_map`), checks each row into a :class:`Record` or a failure reason
(:func:`validate_row`); ``productvlm.prepared`` says what is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from productvlm.answer import FIELD_KINDS, KNOWN_FIELDS, AnswerField, declare_field, parse_price
from productvlm.catalog.sources import BadRow, Row
from productvlm.errors import ProductVLMError

BURBERRY_DATASET_ID = "DBQ/Burberry.Product.prices.United.States"

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


def answer_extras(overrides: Mapping[str, str] | None,
                  declared: Mapping[str, str] | None = None) -> list[AnswerField]:
    """The answer's extra fields a prepare run carries: each ``--map`` name that is not a
    canonical field (a known field such as colour, or one declared with ``--field``), then
    each declared field not mapped (read from the column of its own name).

    >>> [f.name for f in answer_extras({"colour": "col", "title": "name"})]
    ['colour']
    >>> answer_extras({"colr": "c"})
    Traceback (most recent call last):
    productvlm.errors.ProductVLMError: --map colr=...: unknown field 'colr'; fields: ...
    """
    declared = dict(declared or {})
    out: list[AnswerField] = []
    for name in [*(overrides or {}), *declared]:
        if name in CANONICAL_FIELDS or any(f.name == name for f in out):
            continue
        if name in declared:
            out.append(declare_field(name, declared[name]))
        elif name in KNOWN_FIELDS:
            out.append(KNOWN_FIELDS[name])
        else:
            raise ProductVLMError(
                f"--map {name}=...: unknown field {name!r}; fields: "
                f"{', '.join(CANONICAL_FIELDS)}, or an answer field: {', '.join(KNOWN_FIELDS)}; "
                f"declare a new one with --field {name}=KIND (KIND: {', '.join(FIELD_KINDS)})")
    return out


def resolve_column_map(
    columns: Sequence[str],
    preset: str | None = "burberry",
    overrides: Mapping[str, str] | None = None,
    source: str = "catalog",
    extras: Sequence[AnswerField] = (),
) -> dict[str, str]:
    """Decide which source column feeds each canonical field, or say clearly why not.

    A preset's optional fields (product_code, category1/2, currency) are skipped when the
    source lacks their column; a column named in ``overrides`` (``--map``) must exist, as
    must each answer field of ``extras`` (:func:`answer_extras`; its own name's column unless
    ``overrides`` maps it).

    >>> resolve_column_map(["name", "cat", "cost", "url"], None,
    ...                    {"title": "name", "category": "cat", "price": "cost", "image": "url"})
    {'title': 'name', 'category': 'cat', 'price': 'cost', 'image': 'url'}
    """
    overrides = dict(overrides or {})
    if preset is not None and preset not in PRESETS:
        raise ProductVLMError(
            f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}, or 'none' and --map"
        )
    extra_names = [f.name for f in extras]
    for field in overrides:
        if field not in CANONICAL_FIELDS and field not in extra_names:
            answer_extras({field: ""})  # the one-line error naming the fields
    present = list(columns)
    mapping: dict[str, str] = {}
    for field, column in (PRESETS[preset] if preset else {}).items():
        if column in present or field in REQUIRED_FIELDS:
            mapping[field] = column
    mapping.update({name: name for name in extra_names})
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


@dataclass(slots=True)
class Record:
    """A validated row, without its image (that is fetched later); ``extra``: the answer's
    extra fields (colour, material, ...) by name."""

    row: int
    product_code: str
    title: str
    category: str
    category1: str
    category2: str
    price: float
    currency: str
    image: str
    extra: dict[str, Any] = dataclass_field(default_factory=dict)


def text_value(v: Any) -> str:
    """A cell as stripped text; None and NaN (a null in a float column) are ``""``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def code_value(v: Any) -> str:
    """A product code as text: ``code_value(1234.0) == "1234"``."""
    # 1234.0 from a float column (pandas turns int columns with nulls into floats) is "1234"
    if isinstance(v, float) and not math.isnan(v) and v.is_integer():
        return str(int(v))
    return text_value(v)


def _image(v: Any) -> str:
    if isinstance(v, dict):  # a datasets Image column read with decode=False: its path
        return text_value(v.get("path"))
    return text_value(v)


def validate_row(row: Row, mapping: dict[str, str], currency: str = "",
                 extras: Sequence[AnswerField] = (), require_extras: bool = True,
                 ) -> Record | str:
    """The row as a :class:`Record`, or the reason it cannot be used (first problem found).

    An answer field of ``extras`` must have a value too (the model is taught to say one):
    a number field a positive number; with ``require_extras`` False (an audit, which
    compares what a listing says where it says it) a missing one is None.

    >>> m = {"title": "t", "category": "c", "price": "p", "image": "i"}
    >>> validate_row({"t": "Lola Bag", "c": "BAGS", "p": "1,290.00", "i": "a.jpg"}, m).price
    1290.0
    >>> validate_row({"t": "Lola Bag", "c": "BAGS", "p": "N.A.", "i": "a.jpg"}, m)
    "price: invalid ('N.A.')"
    """
    if isinstance(row, BadRow):
        return f"unreadable row ({row.reason})"
    get = {f: row.get(c) for f, c in mapping.items()}
    title, category = text_value(get["title"]), text_value(get["category"])
    if not title:
        return "title: empty"
    if not category:
        return "category: empty"
    raw = get["price"]
    if text_value(raw) == "":
        return "price: missing"
    price = parse_price(raw)
    if price is None:
        return f"price: invalid ({raw!r})"
    if isinstance(get["image"], dict) and get["image"].get("bytes"):
        return "image: embedded image bytes (not supported; map a column of URLs or paths)"
    image = _image(get["image"])
    if not image:
        return "image: missing"
    extra: dict[str, Any] = {}
    for f in extras:
        raw = get.get(f.name)
        value = (None if text_value(raw) == "" else
                 parse_price(raw) if f.kind == "number" else text_value(raw))
        if value is None and require_extras:
            return f"{f.name}: empty" if text_value(raw) == "" else f"{f.name}: invalid ({raw!r})"
        extra[f.name] = value
    return Record(row=0, product_code=code_value(get.get("product_code")), title=title,
                  category=category, category1=text_value(get.get("category1")),
                  category2=text_value(get.get("category2")), price=price,
                  currency=text_value(get.get("currency")) or currency, image=image,
                  extra=extra)


def reason_key(reason: str) -> str:
    """The kind of a failure, for counting: the values and details in a reason dropped.

    >>> reason_key("price: invalid ('12abc')"), reason_key("duplicate of row 3")
    ('price: invalid', 'duplicate')
    >>> reason_key("image: not a URL or path: 'N.A.'")
    'image: not a URL or path'
    """
    if reason.startswith("duplicate of row"):
        return "duplicate"
    head, sep, rest = reason.partition(": ")
    return (head + sep + rest.split(": ", 1)[0]).split(" (", 1)[0]
