"""The answer format as segments for the constrained decoder: literals, free text, a price.

>>> answer_template("seed", ["BAGS"])[3]
Lit(options=('BAGS',))
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from productvlm.answer import DEFAULT_SCHEMA, AnswerField, AnswerSchema, FieldDomain, TargetFormat


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
    #: the only characters it may hold (the training titles' own), or None for any
    alphabet: frozenset[str] | None = None

    def ok(self, c: str) -> bool:
        if self.alphabet is not None and c not in self.alphabet:
            return False
        return c not in self.forbid and unicodedata.category(c)[0] != "C" and c != "\ufffd"


@dataclass(frozen=True)
class Number:
    """A positive price: seed style ``2,290.00`` (thousands grouped by commas, always two
    decimals, as ``format_price`` writes it) or a JSON number (no commas, no leading 0).

    ``reserve``: the tokens kept free for it while the fields before it are written, so a
    long title can never leave the price room for one digit only.
    """

    json: bool
    max_chars: int = 12
    reserve: int = 0


@dataclass(frozen=True)
class End:
    """The ``<|end|>`` token."""


Segment = Lit | Free | Number | End

# Number DFAs: state -> {char class -> next state}; "d" = any digit, "n" = 1-9. Seed style:
# one to three digits, then ",ddd" groups, then "." and exactly two decimals ("0.50" too).
SEED_NUM = {"s": {"0": "z", "n": "a1"}, "z": {".": "p"},
            "a1": {"d": "a2", ",": "c0", ".": "p"}, "a2": {"d": "a3", ",": "c0", ".": "p"},
            "a3": {",": "c0", ".": "p"}, "c0": {"d": "c1"}, "c1": {"d": "c2"},
            "c2": {"d": "g"}, "g": {",": "c0", ".": "p"}, "p": {"d": "f1"}, "f1": {"d": "f2"},
            "f2": {}}
SEED_FINAL = frozenset({"f2"})
JSON_NUM = {"s": {"0": "z", "n": "i"}, "z": {".": "p"}, "i": {"d": "i", ".": "p"},
             "p": {"d": "f"}, "f": {"d": "f"}}
JSON_FINAL = frozenset({"i", "f"})
#: tokens kept for the price while the title is written: "99,999.99", one token a character
PRICE_RESERVE = 9


def answer_template(
    fmt: TargetFormat, categories: list[str] | None, *, title_max_chars: int = 120,
    title_alphabet: str | None = None, extras: Sequence[tuple[AnswerField, FieldDomain]] = (),
    schema: AnswerSchema = DEFAULT_SCHEMA,
) -> tuple[Segment, ...]:
    """The segments of an answer in ``fmt``; ``categories=None`` leaves the category free text.

    ``title_max_chars`` and ``title_alphabet`` bound the title by the training titles (their
    longest length, their characters): a title cannot run on into digits and commas that no
    title had, and ends in time for the fields after it. ``extras``: the schema's extra
    fields after the price, each with what training saw of it (a label among its labels, a
    text within its characters and length, a number); ``schema`` gives the words and keys.

    >>> answer_template("seed", ["BAGS"])[3]
    Lit(options=('BAGS',))
    """
    cats = sorted({c for c in categories or [] if c and c.strip()})
    letters = frozenset(title_alphabet) | {" "} if title_alphabet else None
    js = fmt == "json"
    title = (Free(forbid='"\\', max_chars=title_max_chars, json_escapes=True, alphabet=letters)
             if js else Free(forbid="", max_chars=title_max_chars, alphabet=letters))
    values: list[tuple[AnswerField, Segment]] = [
        (schema.field("title"), title),
        (schema.field("category"), _label(cats, js, max_chars=60)),
        (schema.field("price"), Number(json=js, reserve=PRICE_RESERVE)),
        *((f, _extra(f, domain, js)) for f, domain in extras)]
    segments: list[Segment] = []
    text = ""  # the literal being written: closing quote, separator, the next name
    for i, (f, seg) in enumerate(values):
        quoted = not isinstance(seg, Number)
        if js:
            text += ('{' if i == 0 else ', ') + f'"{f.name}": ' + ('"' if quoted else "")
        else:
            text += ("" if i == 0 else ", ") + f"{f.words}: "
        # the leading-space variant: a target tokenized on its own starts with "▁Product"
        segments += [Lit((text, " " + text) if i == 0 else (text,)), seg]
        text = '"' if js and quoted else ""
    if js:
        segments.append(Lit((text + "}",)))
    return (*segments, End())


def _label(labels: Sequence[str], js: bool, max_chars: int) -> Segment:
    """One of ``labels`` (as JSON writes them inside quotes), or free text without them."""
    if labels:
        return Lit(tuple(json.dumps(c, ensure_ascii=False)[1:-1] for c in labels) if js
                   else tuple(labels))
    return (Free(forbid='"\\', max_chars=max_chars, json_escapes=True) if js
            else Free(forbid=",", max_chars=max_chars))


def _extra(f: AnswerField, domain: FieldDomain, js: bool) -> Segment:
    if f.kind == "number":
        return Number(json=js)
    if f.kind == "label":
        return _label(sorted({c for c in domain.labels if c and c.strip()}), js, max_chars=60)
    letters = frozenset(domain.alphabet) | {" "} if domain.alphabet else None
    longest = domain.max_chars or 120
    return (Free(forbid='"\\', max_chars=longest, json_escapes=True, alphabet=letters) if js
            else Free(forbid="", max_chars=longest, alphabet=letters))


#: the longest token a soft-capped free text may overrun its cap by, in the regex form
REGEX_OVERRUN = 16


def template_regex(template: tuple[Segment, ...]) -> str:
    """The answer format as one regular expression, for engines that take structured output
    as a regex (vLLM's ``StructuredOutputsParams(regex=...)``); the end token is the
    engine's stop token, not part of the pattern.

    It accepts what the token automaton (:mod:`productvlm.constrained.grammar`) accepts:
    a free text never holds the literal after it (", Category: " cannot appear in a title),
    with two differences a regex cannot state: a free text's soft cap becomes a hard cap
    ``REGEX_OVERRUN`` characters past it (no cap where the text may hold that literal's first
    character: the regex that avoids the literal has no length), and the token budget
    (``need``: a field leaves room to finish within ``max_new_tokens``) is the engine's
    ``max_tokens``.

    >>> import re
    >>> rx = template_regex(answer_template("seed", ["BAGS"], title_alphabet="Lola Bg"))
    >>> bool(re.fullmatch(rx, "Product: Lola Bag, Category: BAGS, Full Price: 2,290.00"))
    True
    >>> bool(re.fullmatch(rx, "Product: Lola Bag, Category: COATS, Full Price: 2,290.00"))
    False
    """
    parts = []
    for i, seg in enumerate(template):
        nxt = template[i + 1] if i + 1 < len(template) else None
        if isinstance(seg, Lit):
            options = sorted(seg.options, key=len, reverse=True)
            parts.append("(?:" + "|".join(_escape(o) for o in options) + ")")
        elif isinstance(seg, Number):
            parts.append(_number_regex(seg))
        elif isinstance(seg, Free):
            stop = (nxt.options[0] if isinstance(nxt, Lit) and len(nxt.options) == 1
                    else None)
            parts.append(_free_regex(seg, stop))
    return "".join(parts)


def _number_regex(seg: Number) -> str:
    """A positive price (as the DFA: at least one non-zero digit)."""
    if seg.json:  # no leading zero; within the DFA's length cap
        w = seg.max_chars - 2
        return (rf"(?:[1-9][0-9]{{0,{w}}}(?:\.[0-9]{{1,{w}}})?"
                rf"|0\.[0-9]{{0,{w}}}[1-9][0-9]{{0,{w}}})")
    groups = max(0, (seg.max_chars - 4) // 4)  # ",ddd" groups beside a "d" and ".dd"
    return (rf"(?:[1-9][0-9]{{0,2}}(?:,[0-9]{{3}}){{0,{groups}}}\.[0-9]{{2}}"
            rf"|0\.(?:0[1-9]|[1-9][0-9]))")


def _free_regex(seg: Free, stop: str | None) -> str:
    """A free text: not starting with a space, its characters, never holding ``stop``."""
    def one(banned: set[str]) -> str:  # one character (or JSON escape) not in ``banned``
        cls = _char_class(seg, banned)
        return f'(?:{cls}|\\\\["\\\\/])' if seg.json_escapes else cls

    lead = stop[0] if stop else None
    if lead is None or not _holds(seg, lead):
        return f"{one({' '})}{one(set())}{{0,{seg.max_chars - 1 + REGEX_OVERRUN}}}"
    if lead in stop[1:]:  # a literal whose first character recurs: keep that character out
        return f"{one({' ', lead})}{one({lead})}{{0,{seg.max_chars - 1 + REGEX_OVERRUN}}}"
    # Strings that never hold ``stop`` (its first character c appears once in it): after c
    # and a part of the literal, the next character either goes on with the literal, starts
    # it again (c), or leaves it; the literal's last character is never allowed to complete it.
    c, rest = _escape(lead), stop[1:]
    # "", " ", " C", ...: the literal's parts the text can hold (never the whole of it)
    partial = [rest[:j] for j in range(len(rest)) if all(_holds(seg, ch) for ch in rest[:j])]
    again = "(?:" + "|".join(_escape(p) for p in partial) + ")" + c  # back to "c seen"
    leave = "(?:" + "|".join(_escape(p) + one({lead, rest[j]})
                             for j, p in enumerate(partial)) + ")"
    tail = "(?:" + "|".join(_escape(p) for p in partial) + ")"
    body = f"(?:{one({lead})}|{c}(?:{again})*{leave})*"
    end = f"(?:{c}(?:{again})*{tail})?"
    return (f"(?:{one({' ', lead})}{body}{end}"  # a first character other than c, or c
            f"|{c}(?:{again})*(?:{leave}{body}{end}|{tail}))")


def _holds(seg: Free, c: str) -> bool:
    """Whether free text ``seg`` may hold character ``c``."""
    return seg.ok(c) and (seg.alphabet is None or c in seg.alphabet)


def _char_class(seg: Free, banned: set[str]) -> str:
    """A free text's character class: its alphabet less what it forbids and ``banned``, or
    anything but control characters, what it forbids and ``banned``."""
    banned = set(seg.forbid) | banned
    if seg.alphabet is not None:
        chars = sorted(c for c in seg.alphabet if seg.ok(c) and c not in banned)
        return "[" + "".join(_class_char(c) for c in chars) + "]"
    return "[^" + "".join(_class_char(c) for c in sorted(banned)) + "\\x00-\\x1f\\x7f]"


def _escape(text: str) -> str:
    """``text`` as a literal pattern (only the metacharacters escaped: grammar engines'
    regex dialects differ on escapes such as ``\\ ``)."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in text)


def _class_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c
