"""The one place that formats prompts and targets and parses model answers.

Two answer formats:

* ``seed`` (default), the Phi-3 cookbook's:
  ``Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00``
* ``json``: ``{"title": "Medium Lola Bag", "category": "BAGS", "price": 2290.0}``

Training, evaluation, prediction and serving all go through these functions, so a change of
format here changes every stage at once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

TargetFormat = Literal["seed", "json"]

QUESTION = "What is shown in this image?"
IMAGE_TAG = "<|image_1|>"
END = "<|end|>"

_SEED_RE = re.compile(
    # greedy title: product titles may themselves contain commas
    r"Product:\s*(?P<title>.*)\s*,\s*Category:\s*(?P<category>.*?)\s*,\s*"
    r"(?:Full\s+)?Price:\s*(?P<price>[^\n]*)",
    re.IGNORECASE | re.DOTALL,
)
_CURRENCY_RE = re.compile(r"(?i)\b(usd|eur|gbp|us\$)\b|[$€£¥]")


@dataclass
class ProductFields:
    """What the model is taught to say about a product photo."""

    title: str
    category: str
    price: float


@dataclass
class ParsedAnswer:
    """A parsed model answer; ``error`` says why a field is missing when ``ok`` is False."""

    title: str | None = None
    category: str | None = None
    price: float | None = None
    error: str | None = None

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


def format_answer(fields: ProductFields, fmt: TargetFormat = "seed") -> str:
    """The assistant's answer text, without end tokens.

    >>> format_answer(ProductFields("Medium Lola Bag", "BAGS", 2290.0))
    'Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00'
    """
    if fmt == "json":
        return json.dumps(
            {"title": fields.title, "category": fields.category, "price": round(fields.price, 2)},
            ensure_ascii=False,
        )
    return (
        f"Product: {fields.title}, Category: {fields.category}, "
        f"Full Price: {format_price(fields.price)}"
    )


def _strip_end(text: str) -> str:
    for stop in (END, "<|endoftext|>"):
        cut = text.find(stop)
        if cut != -1:
            text = text[:cut]
    return text.strip()


def parse_answer(text: str, fmt: TargetFormat | None = None) -> ParsedAnswer:
    """Parse a generated answer in either format; never raises.

    ``fmt=None`` detects the format (JSON when the answer starts with ``{``).

    >>> parse_answer("Product: Lola Bag, Category: BAGS, Full Price: $2,290.00<|end|>").price
    2290.0
    """
    body = _strip_end(text)
    if fmt == "json" or (fmt is None and body.startswith("{")):
        return _parse_json(body)
    m = _SEED_RE.search(body)
    if not m:
        return ParsedAnswer(error="answer does not match 'Product: ..., Category: ..., Price: ...'")
    title = m.group("title").strip() or None
    category = m.group("category").strip() or None
    price = parse_price(m.group("price").strip().rstrip(","))
    return _finish(title, category, price, m.group("price").strip())


def _parse_json(body: str) -> ParsedAnswer:
    try:
        obj = json.loads(body[: body.rfind("}") + 1] if "}" in body else body)
    except json.JSONDecodeError as e:
        return ParsedAnswer(error=f"answer is not valid JSON ({e.msg})")
    if not isinstance(obj, dict):
        return ParsedAnswer(error="answer is JSON but not an object")
    low = {str(k).lower(): v for k, v in obj.items()}
    title = low.get("title") or low.get("product")
    category = low.get("category")
    raw_price = low.get("price", low.get("full_price"))
    return _finish(
        str(title).strip() if title else None,
        str(category).strip() if category else None,
        parse_price(raw_price),
        raw_price,
    )


def _finish(title: str | None, category: str | None, price: float | None, raw: Any) -> ParsedAnswer:
    missing = [n for n, v in (("title", title), ("category", category)) if not v]
    if price is None:
        missing.append(f"price (got {raw!r})")
    error = f"missing or unreadable: {', '.join(missing)}" if missing else None
    return ParsedAnswer(title=title, category=category, price=price, error=error)


def title_words(title: str) -> list[str]:
    """The words of a title, lower-cased: the vision warm-up's tags, and the vocabulary an
    audit checks a listing's title against.

    >>> title_words("Medium Pink Check Tote")
    ['medium', 'pink', 'check', 'tote']
    """
    return title.lower().split()


def build_messages(question: str = QUESTION, answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one photo: the user turn holds the image tag and the question."""
    messages = [{"role": "user", "content": f"{IMAGE_TAG}\n{question}"}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_prompt(tokenizer: Any, question: str = QUESTION) -> str:
    """The prompt text up to and including ``<|assistant|>\\n``, via the chat template.

    >>> render_prompt(tok)  # doctest: +SKIP
    '<|user|>\\n<|image_1|>\\nWhat is shown in this image?<|end|>\\n<|assistant|>\\n'
    """
    return tokenizer.apply_chat_template(
        build_messages(question), tokenize=False, add_generation_prompt=True
    )


def render_target(answer: str, tokenizer: Any) -> str:
    """The text the model is trained to produce after the prompt: answer, ``<|end|>``, EOS.

    Training on the end tokens is what makes a fine-tuned model stop talking.
    """
    eos = getattr(tokenizer, "eos_token", None) or "<|endoftext|>"
    return f"{answer}{END}\n{eos}"
