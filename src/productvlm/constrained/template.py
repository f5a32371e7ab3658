"""The answer format as segments for the constrained decoder: literals, free text, a price.

>>> answer_template("seed", ["BAGS"])[3]
Lit(options=('BAGS',))
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

from productvlm.prompts import TargetFormat


@dataclass(frozen=True)
class Lit:
    """One of a few fixed strings (a literal, or the list of categories)."""

    options: tuple[str, ...]


@dataclass(frozen=True)
class Free:
    """Free text: at least one character, the first not a space, no forbidden characters.

    ``max_chars`` is a soft cap: once reached, the text may only end (one token may overrun).
    ``json_escapes``: a backslash starts an escape (``\\"``, ``\\\\``, ``\\/``), as
    ``json.dumps`` writes a title with quotes in it.
    """

    forbid: str
    max_chars: int
    json_escapes: bool = False

    def ok(self, c: str) -> bool:
        return c not in self.forbid and unicodedata.category(c)[0] != "C" and c != "\ufffd"


@dataclass(frozen=True)
class Number:
    """A positive price: seed style ``2,290.00`` or a JSON number (no commas, no leading 0)."""

    json: bool
    max_chars: int = 12


@dataclass(frozen=True)
class End:
    """The ``<|end|>`` token."""


Segment = Lit | Free | Number | End

# Number DFAs: state -> {char class -> next state}; "d" = any digit, "n" = 1-9.
SEED_NUM = {"s": {"d": "i"}, "i": {"d": "i", ",": "i", ".": "f"}, "f": {"d": "f"}}
JSON_NUM = {"s": {"0": "z", "n": "i"}, "z": {".": "p"}, "i": {"d": "i", ".": "p"},
             "p": {"d": "f"}, "f": {"d": "f"}}


def answer_template(
    fmt: TargetFormat, categories: list[str] | None, *, title_max_chars: int = 120
) -> tuple[Segment, ...]:
    """The segments of an answer in ``fmt``; ``categories=None`` leaves the category free text.

    >>> answer_template("seed", ["BAGS"])[3]
    Lit(options=('BAGS',))
    """
    cats = sorted({c for c in categories or [] if c and c.strip()})
    if fmt == "json":
        title = Free(forbid='"\\', max_chars=title_max_chars, json_escapes=True)
        category: Segment = (Lit(tuple(json.dumps(c, ensure_ascii=False)[1:-1] for c in cats))
                             if cats else Free(forbid='"\\', max_chars=60, json_escapes=True))
        return (Lit(('{"title": "', ' {"title": "')), title, Lit(('", "category": "',)),
                category, Lit(('", "price": ',)), Number(json=True), Lit(("}",)), End())
    title = Free(forbid="", max_chars=title_max_chars)
    category = Lit(tuple(cats)) if cats else Free(forbid=",", max_chars=60)
    # The leading-space variant: a target tokenized on its own starts with "▁Product".
    return (Lit(("Product: ", " Product: ")), title, Lit((", Category: ",)), category,
            Lit((", Full Price: ",)), Number(json=False), End())
