"""A run trained with an extra answer field carries it through every later stage: its
targets, labels.json, the constrained answers, predict's JSON, the API, evaluate's metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from productvlm.answer import DEFAULT_SCHEMA, known_field
from productvlm.evaluation.evaluate import EvalConfig, evaluate
from productvlm.inference import Predictor
from productvlm.prepared import MANIFEST
from productvlm.serving.config import ServeConfig
from productvlm.serving.routes import build_app
from productvlm.training.collate import row_to_example
from productvlm.training.config import TrainConfig
from productvlm.training.trainer import train

EXE = Path(sys.executable).with_name("productvlm")
SCHEMA = DEFAULT_SCHEMA.with_extras([known_field("colour")])
SHADE = {"BAGS": "Tan", "COATS": "Navy", "SCARVES": "Red"}


@pytest.fixture(scope="module")
def with_colour(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny prepared dataset with a colour column, its manifest saying so."""
    out = tmp_path_factory.mktemp("colour")
    dd = datasets.load_from_disk(str(prepared / "dataset"))
    dd = datasets.DatasetDict({name: split.add_column("colour", [SHADE[c] for c in
                                                                  split["category"]])
                               for name, split in dd.items()})
    dd.save_to_disk(str(out / "dataset"))
    (out / MANIFEST).write_text(json.dumps({"answer_fields": SCHEMA.extras_json()}))
    return out


@pytest.fixture(scope="module")
def run(base_model: Path, with_colour: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(model=str(base_model), data=with_colour, out=out, mode="lora", lora_r=4,
                      lora_alpha=8, num_crops=1, max_length=256, batch_size=4,
                      learning_rate=1e-3, max_steps=4, logging_steps=1, eval_steps=2,
                      save_steps=2, eval_samples=4, report_to="none", seed=0))
    return out


def test_the_target_and_labels_hold_the_field(base_model: Path, with_colour: Path,
                                              run: Path) -> None:
    from productvlm.models.processors import load_processor

    tok = load_processor(base_model).tokenizer
    row = datasets.load_from_disk(str(with_colour / "dataset"))["train"][0]
    target = row_to_example(row, tok, schema=SCHEMA).target
    assert target.startswith(f"Product: {row['title']}, Category: {row['category']}, "
                             f"Full Price: {row['price']:,.2f}, Colour: {row['colour']}")
    labels = json.loads((run / "labels.json").read_text())
    assert labels["answer_fields"] == SCHEMA.extras_json()
    assert labels["field_domains"]["colour"]["labels"] == ["Navy", "Red", "Tan"]
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_gen_colour_accuracy" in e for e in log)


def test_every_stage_answers_with_the_field(run: Path, with_colour: Path,
                                            tmp_path: Path) -> None:
    predictor = Predictor.load(run)
    assert predictor.schema == SCHEMA
    answer = predictor.predict([Image.new("RGB", (120, 160), "navy")])[0]
    assert answer.ok and answer.extra["colour"] in SHADE.values()  # constrained to them
    assert answer.raw.endswith(f", Colour: {answer.extra['colour']}")

    photo = tmp_path / "coat.png"
    Image.new("RGB", (120, 160), "navy").save(photo)
    proc = subprocess.run([str(EXE), "predict", "--model", str(run), "--json", str(photo)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.splitlines()[0])
    assert list(row)[1:5] == ["title", "category", "price", "colour"]

    client = TestClient(build_app(predictor, ServeConfig(model=str(run))))
    assert client.get("/v1/model").json()["answer_fields"] == [
        {"name": "colour", "kind": "label", "words": "Colour"}]
    got = client.post("/v1/predict", files={"files": ("coat.png", photo.read_bytes())}).json()
    assert got["results"][0]["colour"] == row["colour"]
    spec = client.get("/openapi.json").json()["components"]["schemas"]["ImageResult"]
    assert "colour" in spec["properties"]

    result = evaluate(EvalConfig(model=str(run), data=with_colour, split="test",
                                 out=tmp_path / "eval", report_to="none"))
    assert "colour_accuracy" in result.metrics
    assert "colour_accuracy" in result.baselines["constant"]
    assert "Colour confusion matrix" in (tmp_path / "eval/report.html").read_text()
