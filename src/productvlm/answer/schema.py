"""The answer schema: writing an answer's fields as a target and reading them back from a
model's answer, in the seed and JSON formats (see the package docstring).

>>> DEFAULT_SCHEMA.format(ProductFields("Medium Lola Bag", "BAGS", 2290.0))
'Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from productvlm.answer.fields import (
    CATEGORY,
    CORE,
    PRICE,
    TITLE,
    AnswerField,
    TargetFormat,
)
from productvlm.errors import ProductVLMError

#: every family's end-of-answer and end-of-text tokens, cut from an answer before parsing
ENDS = ("<|end|>", "<|endoftext|>", "<|im_end|>", "<end_of_utterance>")
_CURRENCY_RE = re.compile(r"(?i)\b(usd|eur|gbp|us\$)\b|[$€£¥]")


class _Fields:
    """Reading the answer's fields by name, for the truth and for a parsed answer alike."""

    title: Any
    category: Any
    price: Any
    extra: dict[str, Any]

    def get(self, name: str) -> Any:
        """The value of field ``name`` (a core attribute or an extra field)."""
        return getattr(self, name) if name in CORE else self.extra.get(name)

    def values(self) -> dict[str, Any]:
        """Every field's value by name: title, category, price, then the extras."""
        return {"title": self.title, "category": self.category, "price": self.price,
                **self.extra}


@dataclass
class ProductFields(_Fields):
    """What the model is taught to say about a product photo: the truth of one row.

    >>> ProductFields("Lola Bag", "BAGS", 2290.0, {"colour": "Beige"}).get("colour")
    'Beige'
    """

    title: str
    category: str
    price: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParsedAnswer(_Fields):
    """A parsed model answer; ``error`` says why a field is missing when ``ok`` is False;
    ``extra`` holds the schema's extra fields by name."""

    title: str | None = None
    category: str | None = None
    price: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_price(value: Any) -> float | None:
    """Read a price written as a number or as text like "1,290.00", "$2,290", "1290 USD".

    Returns None when there is no usable positive finite number (missing, "N.A.", negative).

    >>> parse_price("1,290.00"), parse_price("$ 32"), parse_price("N.A.")
    (1290.0, 32.0, None)
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        x = float(value)
    else:
        text = _CURRENCY_RE.sub("", str(value)).strip().replace(" ", "").replace("\u00a0", "")
        if re.fullmatch(r"\d{1,3}(\.\d{3})+,\d{1,2}", text):  # European "1.290,00"
            text = text.replace(".", "").replace(",", ".")
        else:
            text = text.replace(",", "")
        text = text.rstrip(".")
        try:
            x = float(text)
        except ValueError:
            return None
    if not math.isfinite(x) or x <= 0:
        return None
    return x


def format_price(price: float) -> str:
    """Retail style with thousands separators and cents: ``format_price(2290) == '2,290.00'``."""
    return f"{price:,.2f}"


def strip_end(text: str) -> str:
    """An answer without its end tokens and what follows them."""
    for stop in ENDS:
        cut = text.find(stop)
        if cut != -1:
            text = text[:cut]
    return text.strip()


@dataclass(frozen=True)
class AnswerSchema:
    """The answer's fields in order: title, category, price, then the catalog's extras.

    >>> DEFAULT_SCHEMA.format(ProductFields("Medium Lola Bag", "BAGS", 2290.0))
    'Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00'
    >>> DEFAULT_SCHEMA.parse("Product: Lola Bag, Category: BAGS, Full Price: $2,290<|end|>").price
    2290.0
    """

    fields: tuple[AnswerField, ...] = (TITLE, CATEGORY, PRICE)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if tuple(names[:3]) != CORE or len(set(names)) != len(names):
            raise ProductVLMError(f"answer fields {names}: they start with {', '.join(CORE)} "
                                  "and name each field once")

    @property
    def extras(self) -> tuple[AnswerField, ...]:
        """The fields after title, category and price."""
        return self.fields[3:]

    def field(self, name: str) -> AnswerField:
        return next(f for f in self.fields if f.name == name)

    def with_extras(self, extras: Sequence[AnswerField]) -> AnswerSchema:
        """This schema with ``extras`` after its own fields."""
        return AnswerSchema((*self.fields, *extras))

    # --- saving ---------------------------------------------------------------------------
    def extras_json(self) -> list[dict[str, Any]]:
        """The extra fields as JSON (the prepared manifest and labels.json keep them)."""
        return [f.to_dict() for f in self.extras]

    @classmethod
    def from_extras_json(cls, data: Sequence[Mapping[str, Any]] | None) -> AnswerSchema:
        """The schema saved by :meth:`extras_json` (None or [] for the default).

        >>> AnswerSchema.from_extras_json(DEFAULT_SCHEMA.extras_json()) == DEFAULT_SCHEMA
        True
        """
        extras = [AnswerField(**{**d, "aliases": tuple(d.get("aliases") or ()),
                                 "keys": tuple(d.get("keys") or ())}) for d in data or []]
        return DEFAULT_SCHEMA.with_extras(extras)

    def truth(self, row: Mapping[str, Any]) -> ProductFields:
        """The fields of a prepared dataset row (its columns by name).

        >>> DEFAULT_SCHEMA.truth({"title": "Lola Bag", "category": "BAGS", "price": 2290})
        ProductFields(title='Lola Bag', category='BAGS', price=2290.0, extra={})
        """
        return ProductFields(str(row["title"]), str(row["category"]), float(row["price"]),
                             {f.name: row[f.column] for f in self.extras})

    @property
    def columns(self) -> tuple[str, ...]:
        """The prepared dataset's columns the fields come from."""
        return tuple(f.column for f in self.fields)

    # --- writing --------------------------------------------------------------------------
    def format(self, values: ProductFields, fmt: TargetFormat = "seed") -> str:
        """The assistant's answer text, without end tokens."""
        if fmt == "json":
            return json.dumps({f.name: _json_value(f, values.get(f.name)) for f in self.fields},
                              ensure_ascii=False)
        return ", ".join(f"{f.words}: {_seed_value(f, values.get(f.name))}"
                         for f in self.fields)

    # --- reading --------------------------------------------------------------------------
    def parse(self, text: str, fmt: TargetFormat | None = None) -> ParsedAnswer:
        """Parse a generated answer in either format; never raises.

        ``fmt=None`` detects the format (JSON when the answer starts with ``{``).
        """
        body = strip_end(text)
        if fmt == "json" or (fmt is None and body.startswith("{")):
            return self._parse_json(body)
        m = self._seed_re.search(body)
        if not m:
            shape = ", ".join(f"{f.short}: ..." for f in self.fields[:3])
            return ParsedAnswer(error=f"answer does not match '{shape}'")
        return self._finish({f.name: m.group(f.name) for f in self.fields})

    @cached_property
    def _seed_re(self) -> re.Pattern[str]:
        def words(f: AnswerField) -> str:  # "Full Price" or "Price", any spaces between words
            alts = sorted((f.words, *f.aliases), key=len, reverse=True)
            return "(?:" + "|".join(r"\s+".join(map(re.escape, a.split())) for a in alts) + ")"

        # greedy title (product titles may themselves contain commas), lazy middle fields
        core = (rf"{words(TITLE)}:\s*(?P<title>.*)\s*,\s*{words(CATEGORY)}:\s*"
                rf"(?P<category>.*?)\s*,\s*{words(PRICE)}:\s*")
        if not self.extras:
            return re.compile(core + r"(?P<price>[^\n]*)", re.IGNORECASE | re.DOTALL)
        tail = "".join(rf"(?:\s*,\s*{words(f)}:\s*(?P<{f.name}>[^\n]*?))?" for f in self.extras)
        return re.compile(core + r"(?P<price>[^\n]*?)" + tail + r"\s*(?:\n|$)",
                          re.IGNORECASE | re.DOTALL)

    def _parse_json(self, body: str) -> ParsedAnswer:
        try:
            obj = json.loads(body[: body.rfind("}") + 1] if "}" in body else body)
        except json.JSONDecodeError as e:
            return ParsedAnswer(error=f"answer is not valid JSON ({e.msg})")
        if not isinstance(obj, dict):
            return ParsedAnswer(error="answer is JSON but not an object")
        low = {str(k).lower(): v for k, v in obj.items()}
        raw: dict[str, Any] = {}
        for f in self.fields:
            found = [low[k] for k in (f.name, *f.keys) if k in low]
            # a text's falsy value (0, "") is missing, as before; a number's is read as one
            raw[f.name] = (found[0] if found and (f.kind == "number" or found[0]) else
                           next((v for v in found if v), None))
        return self._finish(raw)

    def _finish(self, raw: Mapping[str, Any]) -> ParsedAnswer:
        values: dict[str, Any] = {}
        missing: list[str] = []
        for f in self.fields:
            value = raw.get(f.name)
            if f.kind == "number":
                got = parse_price(value.strip().rstrip(",") if isinstance(value, str) else value)
                if got is None:
                    missing.append(f"{f.name} (got {_raw_repr(value)!r})")
            else:
                got = (str(value).strip() if value else "") or None
                if got is None:
                    missing.append(f.name)
            values[f.name] = got
        # the core's errors first, in the core's order, as the three-field format said them
        error = f"missing or unreadable: {', '.join(missing)}" if missing else None
        return ParsedAnswer(values["title"], values["category"], values["price"], error,
                            {f.name: values[f.name] for f in self.extras})


def _raw_repr(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _json_value(f: AnswerField, value: Any) -> Any:
    return round(float(value), 2) if f.kind == "number" else value


def _seed_value(f: AnswerField, value: Any) -> str:
    return format_price(float(value)) if f.kind == "number" else str(value)


DEFAULT_SCHEMA = AnswerSchema()


def format_answer(fields: ProductFields, fmt: TargetFormat = "seed",
                  schema: AnswerSchema = DEFAULT_SCHEMA) -> str:
    """The assistant's answer text, without end tokens.

    >>> format_answer(ProductFields("Medium Lola Bag", "BAGS", 2290.0))
    'Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00'
    """
    return schema.format(fields, fmt)


def parse_answer(text: str, fmt: TargetFormat | None = None,
                 schema: AnswerSchema = DEFAULT_SCHEMA) -> ParsedAnswer:
    """Parse a generated answer in either format; never raises.

    ``fmt=None`` detects the format (JSON when the answer starts with ``{``).

    >>> parse_answer("Product: Lola Bag, Category: BAGS, Full Price: $2,290.00<|end|>").price
    2290.0
    """
    return schema.parse(text, fmt)
