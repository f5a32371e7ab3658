"""The answer schema: the default answers unchanged, extra fields written, parsed, constrained,
scored and served from one declaration, and the errors of declaring them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image

from productvlm.answer import (
    DEFAULT_SCHEMA,
    AnswerField,
    AnswerSchema,
    FieldDomain,
    ParsedAnswer,
    ProductFields,
    declare_field,
    known_field,
)
from productvlm.catalog.prepare import prepare
from productvlm.catalog.schema import answer_extras
from productvlm.constrained import AnswerGrammar, TokenVocab, answer_template, template_regex
from productvlm.errors import ProductVLMError
from productvlm.evaluation.baselines import compute_baselines
from productvlm.evaluation.metrics import all_metrics, field_metrics, row_scores
from productvlm.inference import Prediction
from productvlm.inference.generation import answer_format
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer
from productvlm.prepared import load_prepared, load_schema

EXE = Path(sys.executable).with_name("productvlm")
NOTE = declare_field("note", "text")
SIZE = declare_field("size_cm", "number")
SCHEMA = DEFAULT_SCHEMA.with_extras([known_field("colour"), known_field("material")])
WIDE = DEFAULT_SCHEMA.with_extras([known_field("colour"), NOTE, SIZE])
LOLA = ProductFields("Medium Lola Bag", "BAGS", 2290.0,
                     {"colour": "Beige", "material": "Leather"})


def test_the_default_schema_writes_and_reads_the_three_fields_as_before() -> None:
    fields = ProductFields("Medium Lola, Bag", "BAGS", 2290.0)
    assert DEFAULT_SCHEMA.format(fields) == \
        "Product: Medium Lola, Bag, Category: BAGS, Full Price: 2,290.00"
    assert DEFAULT_SCHEMA.format(fields, "json") == \
        '{"title": "Medium Lola, Bag", "category": "BAGS", "price": 2290.0}'
    got = DEFAULT_SCHEMA.parse("Product: Medium Lola, Bag, Category: BAGS, Price: $2,290<|end|>")
    assert (got.title, got.category, got.price, got.extra, got.ok) == \
        ("Medium Lola, Bag", "BAGS", 2290.0, {}, True)
    bad = DEFAULT_SCHEMA.parse("Product: X, Category: , Full Price: N.A.")
    assert bad.error == "missing or unreadable: category, price (got 'N.A.')"
    assert DEFAULT_SCHEMA.parse("a bag").error == \
        "answer does not match 'Product: ..., Category: ..., Price: ...'"
    # a saved default schema is no schema at all: labels.json and manifests stay as they were
    assert DEFAULT_SCHEMA.extras_json() == []
    assert AnswerSchema.from_extras_json(None) == DEFAULT_SCHEMA


@pytest.mark.parametrize("fmt", ["seed", "json"])
def test_extra_fields_round_trip_in_both_formats(fmt: str) -> None:
    text = SCHEMA.format(LOLA, fmt)
    if fmt == "seed":
        assert text == ("Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00, "
                        "Colour: Beige, Material: Leather")
    got = SCHEMA.parse(text + "<|end|>", fmt)
    assert got.ok and got.values() == LOLA.values()
    wide = ProductFields("Lola", "BAGS", 10.0, {"colour": "Red", "note": "a, b", "size_cm": 30.5})
    assert WIDE.parse(WIDE.format(wide, fmt), fmt).values() == wide.values()
    assert SCHEMA.from_extras_json(json.loads(json.dumps(SCHEMA.extras_json()))) == SCHEMA


def test_a_missing_extra_field_is_named_and_the_others_are_still_read() -> None:
    got = SCHEMA.parse("Product: Lola Bag, Category: BAGS, Full Price: 1,290.00, Colour: Red")
    assert (got.title, got.price, got.extra) == ("Lola Bag", 1290.0,
                                                 {"colour": "Red", "material": None})
    assert got.error == "missing or unreadable: material"
    # the other spelling, and JSON's other key
    assert SCHEMA.parse("Product: A, Category: B, Price: 1.00, Color: Red, Material: Silk"
                        ).extra == {"colour": "Red", "material": "Silk"}
    assert SCHEMA.parse('{"title": "A", "category": "B", "price": 1, "color": "Red", '
                        '"material": "Silk"}').extra["colour"] == "Red"


def test_declaring_fields_and_their_errors() -> None:
    assert declare_field("fabric_weight", "number").words == "Fabric Weight"
    assert declare_field("colour", "label") == known_field("colour")
    for name, kind in (("Bad Name", "label"), ("title", "text"), ("fabric", "colourful")):
        with pytest.raises(ProductVLMError, match="answer field"):
            declare_field(name, kind)
    with pytest.raises(ProductVLMError, match=r"--map colr=\.\.\.: unknown field 'colr'.*--field"):
        answer_extras({"colr": "c"})
    assert [f.name for f in answer_extras({"title": "name", "colour": "c"}, {"fit": "label"})] \
        == ["colour", "fit"]
    with pytest.raises(ProductVLMError, match="start with title, category, price"):
        AnswerSchema((AnswerField("colour", "label", "Colour"),))


@pytest.fixture(scope="module")
def tok():
    texts = [SCHEMA.format(LOLA), SCHEMA.format(LOLA, "json"),
             WIDE.format(ProductFields("Lola", "BAGS", 10.0,
                                       {"colour": "Red", "note": "soft", "size_cm": 30.0}))]
    return train_tiny_tokenizer(texts * 20 + ["Black Red Navy Silk Cotton 0123456789,."], 400)


@pytest.mark.parametrize("fmt", ["seed", "json"])
def test_the_constrained_answer_holds_each_field_to_what_training_saw(tok, fmt: str) -> None:
    domains = {"colour": FieldDomain(("Beige", "Red")), "material": FieldDomain(("Leather",))}
    template = answer_format(fmt, ["BAGS"], None, None, SCHEMA, domains)
    grammar = AnswerGrammar(TokenVocab.from_tokenizer(tok), template)
    rx = template_regex(template)
    good = SCHEMA.format(LOLA, fmt)
    wrong = SCHEMA.format(ProductFields("Medium Lola Bag", "BAGS", 2290.0,
                                        {"colour": "Navy", "material": "Leather"}), fmt)
    assert grammar.accepts(good) and re.fullmatch(rx, good)
    assert not grammar.accepts(wrong) and not re.fullmatch(rx, wrong)
    # a text and a number field: free text, and a number in the price's style
    wide = answer_template(fmt, ["BAGS"], extras=[(WIDE.field("colour"), FieldDomain(("Red",))),
                                                  (NOTE, FieldDomain()), (SIZE, FieldDomain())],
                           schema=WIDE)
    text = WIDE.format(ProductFields("Lola", "BAGS", 10.0,
                                     {"colour": "Red", "note": "soft", "size_cm": 30.0}), fmt)
    assert AnswerGrammar(TokenVocab.from_tokenizer(tok), wide).accepts(text)
    assert re.fullmatch(template_regex(wide), text)
    # the default template is the one it always was
    from productvlm.constrained.template import End, Free, Lit, Number

    if fmt == "seed":
        old = (Lit(("Product: ", " Product: ")), Free(forbid="", max_chars=120),
               Lit((", Category: ",)), Lit(("BAGS",)), Lit((", Full Price: ",)),
               Number(json=False, reserve=9), End())
    else:
        old = (Lit(('{"title": "', ' {"title": "')),
               Free(forbid='"\\', max_chars=120, json_escapes=True),
               Lit(('", "category": "',)), Lit(("BAGS",)), Lit(('", "price": ',)),
               Number(json=True, reserve=9), Lit(("}",)), End())
    assert answer_template(fmt, ["BAGS"]) == old


def test_the_record_carries_extra_fields_flat_in_its_json() -> None:
    p = Prediction.from_answer(SCHEMA.format(LOLA), schema=SCHEMA, currency="USD")
    row = p.to_dict()
    assert list(row)[:6] == ["title", "category", "price", "colour", "material", "currency"]
    assert Prediction.from_dict(row) == p
    plain = Prediction("Lola", "BAGS", 1.0).to_dict()
    assert list(plain) == ["title", "category", "price", "currency", "raw", "latency_ms",
                           "price_low", "price_high", "interval_level", "category_prob",
                           "confidence", "low_confidence", "doubt", "ok", "error"]


def test_each_extra_field_is_scored_and_has_a_majority_baseline() -> None:
    train = [ProductFields("a", "BAGS", 10.0, {"colour": "Red", "note": "x y", "size_cm": 10.0}),
             ProductFields("b", "BAGS", 20.0, {"colour": "Red", "note": "x", "size_cm": 30.0}),
             ProductFields("c", "COATS", 30.0, {"colour": "Navy", "note": "z", "size_cm": 40.0})]
    preds = [ParsedAnswer("a", "BAGS", 10.0, extra={"colour": "red", "note": "x y",
                                                     "size_cm": 11.0}),
             ParsedAnswer("b", "BAGS", 20.0, extra={"colour": "Navy", "note": None,
                                                     "size_cm": None}),
             ParsedAnswer("c", "COATS", 30.0, extra={"colour": "Navy", "note": "z",
                                                      "size_cm": 40.0})]
    m = all_metrics(train, preds, schema=WIDE)
    assert m["colour_accuracy"] == pytest.approx(2 / 3)
    assert m["note_token_f1"] == pytest.approx(2 / 3)
    assert m["size_cm_mape"] == pytest.approx((0.1 + 1.0 + 0.0) / 3)
    assert field_metrics(train, preds, NOTE) == {"note_token_f1": pytest.approx(2 / 3)}
    assert row_scores(train[1], preds[1], schema=WIDE)["colour_correct"] is False
    base = compute_baselines(train, train)
    assert base["constant"][0].extra == {"colour": "Red", "note": "x", "size_cm": 30.0}
    assert base["category_oracle"][2].extra["colour"] == "Navy"
    assert "colour_accuracy" not in all_metrics(train, preds)  # the default schema's


def test_the_api_model_is_the_record_with_the_models_fields() -> None:
    from productvlm.serving.results import api_models

    result, _ = api_models(SCHEMA)
    names = list(result.model_fields)
    assert names[3:8] == ["title", "category", "price", "colour", "material"]
    assert result.model_fields["confidence"].description.startswith("chance that")
    assert "colour" not in api_models(DEFAULT_SCHEMA)[0].model_fields


def _catalog(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.new("RGB", (40, 50), (20 * i, 90, 160)).save(root / "images" / f"{i}.png")
        rows.append({"product_code": i, "title": f"Bag {i}", "category": "BAGS",
                     "price": f"{100 + i}.00", "image": f"images/{i}.png",
                     "shade": ["Red", "Navy"][i % 2], "fabric": "Silk", "width": 20 + i})
    rows[3]["shade"] = ""
    rows[4]["width"] = "wide"
    path = root / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_prepare_carries_mapped_fields_and_reports_rows_without_them(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    src = _catalog(tmp_path / "cat")
    res = prepare(str(src), tmp_path / "prep", "simple",
                  {"colour": "shade", "fabric": "fabric", "width": "width"},
                  fields={"fabric": "label", "width": "number"}, val_fraction=0.2,
                  test_fraction=0.2, verbose=False, progress=False)
    assert res.rows_in == 12 and res.prepared == 10
    failures = (tmp_path / "prep/failures.csv").read_text()
    assert "3,3,colour: empty" in failures and "4,4,width: invalid ('wide')" in failures
    schema = load_schema(tmp_path / "prep")
    assert [(f.name, f.kind) for f in schema.extras] == \
        [("colour", "label"), ("fabric", "label"), ("width", "number")]
    ds = load_prepared(tmp_path / "prep")
    row = ds["train"][0]
    assert row["colour"] in ("Red", "Navy") and row["fabric"] == "Silk"
    assert isinstance(row["width"], float)


def test_prepare_cli_declares_fields_and_names_an_unknown_one(tmp_path: Path) -> None:
    src = _catalog(tmp_path / "cat")
    bad = subprocess.run([str(EXE), "prepare", str(src), "-o", str(tmp_path / "p1"),
                          "--preset", "simple", "--map", "colr=shade"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown field 'colr'" in lines[0] and "--field" in lines[0]
    ok = subprocess.run([str(EXE), "prepare", str(src), "-o", str(tmp_path / "p2"),
                         "--preset", "simple", "--map", "colour=shade", "--field",
                         "fabric=label", "--no-progress"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((tmp_path / "p2/manifest.json").read_text())
    assert [f["name"] for f in manifest["answer_fields"]] == ["colour", "fabric"]
    assert "3,3,colour: empty" in (tmp_path / "p2/failures.csv").read_text()
