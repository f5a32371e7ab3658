"""prompts.py: the one place answers are formatted and parsed."""

from __future__ import annotations

import pytest

from productvlm.answer import ProductFields, format_answer, parse_answer, parse_price
from productvlm.prompts import build_messages, render_target

LOLA = ProductFields("Medium Lola Bag", "BAGS", 2290.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,290.00", 1290.0),
        ("$2,290", 2290.0),
        ("1290 USD", 1290.0),
        ("€ 1.290,00", 1290.0),
        (32, 32.0),
        (70000.0, 70000.0),
        ("N.A.", None),
        ("", None),
        (None, None),
        ("-5", None),
        ("nan", None),
        (True, None),
    ],
)
def test_parse_price(text: object, expected: float | None) -> None:
    assert parse_price(text) == expected


@pytest.mark.parametrize("fmt", ["seed", "json"])
def test_round_trip(fmt: str) -> None:
    parsed = parse_answer(format_answer(LOLA, fmt) + "<|end|>\n<|endoftext|>", fmt)
    assert parsed.ok, parsed.error
    assert (parsed.title, parsed.category, parsed.price) == ("Medium Lola Bag", "BAGS", 2290.0)


def test_seed_format_matches_cookbook() -> None:
    assert format_answer(LOLA) == "Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00"


def test_titles_with_commas_and_loose_spacing() -> None:
    parsed = parse_answer("Product:  Check, Wool Scarf ,Category: SCARVES,  Price: $ 590")
    assert (parsed.title, parsed.category, parsed.price) == ("Check, Wool Scarf", "SCARVES", 590.0)


def test_format_is_detected() -> None:
    assert parse_answer('{"title": "A", "category": "B", "price": "1,000"}').price == 1000.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a trench coat", "does not match"),
        ("Product: Coat, Category: COATS, Full Price: N.A.", "price"),
        ("Product: , Category: COATS, Full Price: 10", "title"),
        ('{"title": "A", "category": "B"', "not valid JSON"),
    ],
)
def test_failures_are_recorded_not_raised(text: str, reason: str) -> None:
    parsed = parse_answer(text)
    assert not parsed.ok
    assert reason in parsed.error


def test_json_that_is_not_an_object() -> None:
    assert "not an object" in parse_answer("[1, 2]", "json").error


def test_messages_and_target() -> None:
    class Tok:
        eos_token = "<|endoftext|>"

    msgs = build_messages("Q?", answer="A")
    assert msgs == [
        {"role": "user", "content": "<|image_1|>\nQ?"},
        {"role": "assistant", "content": "A"},
    ]
    assert render_target("A", Tok()) == "A<|end|>\n<|endoftext|>"


def test_the_real_phi3_template_gives_the_phi3_target(conformance_dir) -> None:
    """chat_parts, read off Phi-3-vision's own chat template, gives the target productvlm has
    always trained on: the answer, <|end|>, a newline and <|endoftext|>."""
    from productvlm.models.processors import load_processor
    from productvlm.prompts import chat_parts, render_target

    tok = load_processor(conformance_dir / "hub").tokenizer
    assert chat_parts(tok).end == "<|end|>"
    assert render_target("A", tok) == "A<|end|>\n<|endoftext|>"
