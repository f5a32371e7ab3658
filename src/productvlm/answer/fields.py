"""The answer's fields: what a field is (:class:`AnswerField`), the core three, the fields a
catalog often has (:data:`KNOWN_FIELDS`), declaring a new one, and what training saw of one
(:class:`FieldDomain`). :mod:`productvlm.answer.schema` writes and reads them.

>>> known_field("colour").kind
'label'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from productvlm.errors import ProductVLMError

TargetFormat = Literal["seed", "json"]
#: free text (token F1), a label from the catalog (accuracy, macro-F1, constrained to the
#: training labels), a number (MAPE; written as a price is)
FieldKind = Literal["text", "label", "number"]
FIELD_KINDS: tuple[str, ...] = get_args(FieldKind)
CORE = ("title", "category", "price")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class AnswerField:
    """One field of the answer.

    ``words``: how the seed format names it (``"Full Price"``); ``aliases``: other words the
    parser also reads (``"Price"``); ``keys``: other JSON keys it also reads (``"full_price"``);
    the JSON key written is ``name``. ``column``: the prepared dataset's column that holds
    the truth (``name`` unless said).

    >>> AnswerField("colour", "label", "Colour").column
    'colour'
    """

    name: str
    kind: FieldKind
    words: str
    aliases: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    column: str = ""

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)

    @property
    def short(self) -> str:
        """The shortest words it is read by, for messages (``Price``)."""
        return min((self.words, *self.aliases), key=len)

    def to_dict(self) -> dict[str, Any]:
        """The field as JSON (lists where it holds tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


TITLE = AnswerField("title", "text", "Product", keys=("product",))
CATEGORY = AnswerField("category", "label", "Category")
PRICE = AnswerField("price", "number", "Full Price", aliases=("Price",), keys=("full_price",))

#: fields a catalog often has beyond the three: ``--map colour=COLUMN`` declares one
KNOWN_FIELDS: dict[str, AnswerField] = {f.name: f for f in (
    AnswerField("colour", "label", "Colour", aliases=("Color",), keys=("color",)),
    AnswerField("material", "label", "Material"),
    AnswerField("gender", "label", "Gender"),
    AnswerField("size", "label", "Size"),
    AnswerField("brand", "label", "Brand"),
    AnswerField("collection", "label", "Collection"),
)}


def known_field(name: str) -> AnswerField:
    """A field from :data:`KNOWN_FIELDS`, or a one-line error naming the choices.

    >>> known_field("colour").kind
    'label'
    """
    if name not in KNOWN_FIELDS:
        raise ProductVLMError(
            f"unknown answer field {name!r}; known: {', '.join(KNOWN_FIELDS)}; declare a new "
            f"one with --field {name}=KIND (KIND one of {', '.join(FIELD_KINDS)})")
    return KNOWN_FIELDS[name]


def declare_field(name: str, kind: str) -> AnswerField:
    """A field the user declares (``--field fabric=label``): seed words from its name.

    >>> declare_field("fabric_weight", "number").words
    'Fabric Weight'
    """
    if not _NAME_RE.fullmatch(name) or name in CORE:
        raise ProductVLMError(
            f"answer field {name!r}: a field name is lower-case letters, digits and _ (at "
            f"most 32), starts with a letter, and is not one of {', '.join(CORE)}")
    if kind not in FIELD_KINDS:
        raise ProductVLMError(f"answer field {name!r}: kind {kind!r} is not one of "
                              f"{', '.join(FIELD_KINDS)}")
    if name in KNOWN_FIELDS and KNOWN_FIELDS[name].kind == kind:
        return KNOWN_FIELDS[name]
    return AnswerField(name, kind, name.replace("_", " ").title())  # type: ignore[arg-type]


@dataclass(frozen=True)
class FieldDomain:
    """What training saw of a field, which bounds it in a constrained answer: a label field's
    labels, a text field's characters and longest length (a number field: nothing).

    >>> FieldDomain.of(KNOWN_FIELDS["colour"], ["Beige", "Black", "Beige"]).labels
    ('Beige', 'Black')
    """

    labels: tuple[str, ...] = ()
    alphabet: str = ""
    max_chars: int = 0

    @classmethod
    def of(cls, f: AnswerField, values: Sequence[Any]) -> FieldDomain:
        texts = [str(v) for v in values if v is not None and str(v).strip()]
        if f.kind == "label":
            return cls(labels=tuple(sorted(set(texts))))
        if f.kind == "text" and texts:
            return cls(alphabet="".join(sorted({c for t in texts for c in t})),
                       max_chars=max(len(t) for t in texts))
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "alphabet": self.alphabet,
                "max_chars": self.max_chars}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldDomain:
        return cls(tuple(data.get("labels") or ()), str(data.get("alphabet") or ""),
                   int(data.get("max_chars") or 0))
