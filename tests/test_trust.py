"""Every prediction of a calibrated model says how far to trust it, the same in Predictor,
predict --json, the HTTP API and evaluate; a model without a calibration says so and answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from productvlm.inference import Predictor
from productvlm.prepared import load_prepared

FIELDS = ("price_low", "price_high", "interval_level", "category_prob", "confidence",
          "low_confidence")


@pytest.fixture(scope="module")
def photos(calibrated_run: dict[str, Path]) -> list[Any]:
    test = load_prepared(calibrated_run["prepared"], splits=("test",))["test"]
    return [test[i]["image"].convert("RGB") for i in range(6)]


def test_predictions_carry_an_interval_probability_and_confidence(
        calibrated_run: dict[str, Path], photos: list[Any]) -> None:
    predictor = Predictor.load(calibrated_run["run"], batch_size=4, max_new_tokens=48,
                               interval_level=0.9)
    plain = Predictor.load(calibrated_run["run"], batch_size=4, max_new_tokens=48)
    plain.calibration = None
    preds, bare = predictor.predict(photos), plain.predict(photos)
    for p, b in zip(preds, bare, strict=True):
        assert p.raw == b.raw  # the answer text is the same with or without calibration
        assert p.interval_level == 0.9 and 0 < p.price_low <= p.price_high
        assert 0 <= p.category_prob <= 1 and 0 <= p.confidence <= 1
        under = p.confidence < predictor.low_confidence
        assert p.low_confidence == bool(p.doubt) and under <= p.low_confidence
        assert under == ("confidence" in (p.doubt or ""))
        assert all(getattr(b, f) is None for f in FIELDS)
        assert set(FIELDS) <= set(p.to_dict()) and "signals" not in p.to_dict()
    wider = Predictor.load(calibrated_run["run"], batch_size=4, max_new_tokens=48,
                           interval_level=0.99).predict(photos[:2])
    for narrow, wide in zip(preds, wider, strict=False):
        assert wide.price_low <= narrow.price_low and wide.price_high >= narrow.price_high


def test_a_model_without_calibration_says_so_and_predicts(
        calibrated_run: dict[str, Path], photos: list[Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "run"
    shutil.copytree(calibrated_run["run"], bare)
    shutil.rmtree(bare / "calibration")
    preds = Predictor.load(bare, max_new_tokens=48).predict(photos[:2])
    assert "no calibration" in capsys.readouterr().err
    assert all(p.ok and p.price_low is None and p.confidence is None for p in preds)


def test_predict_json_and_the_api_return_them(calibrated_run: dict[str, Path],
                                              photos: list[Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    from productvlm.predict import PredictConfig, predict_files
    from productvlm.serving.app import create_app, load_predictor
    from productvlm.serving.config import ServeConfig

    photos[0].save(tmp_path / "a.jpg")
    assert predict_files(PredictConfig(model=str(calibrated_run["run"]), json_lines=True,
                                       images=[str(tmp_path / "a.jpg")],
                                       max_new_tokens=48)) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(FIELDS) <= set(row) and row["price_low"] <= row["price_high"]

    cfg = ServeConfig(model=str(calibrated_run["run"]), max_new_tokens=48, low_confidence=1.0)
    with TestClient(create_app(load_predictor(cfg), cfg)) as client:
        body = client.post("/v1/predict", files={"files": ("a.jpg", (tmp_path / "a.jpg")
                                                          .read_bytes())}).json()
        (result,) = body["results"]
        assert result["low_confidence"] is True  # every answer is under a threshold of 1
        assert result["price_low"] == row["price_low"] and result["confidence"] is not None
        schema = client.get("/openapi.json").json()["components"]["schemas"]["ImageResult"]
        for field in FIELDS:
            assert schema["properties"][field].get("description"), field
        assert client.get("/v1/model").json()["calibrated"] is True


def test_evaluate_reports_coverage_width_and_calibration(calibrated_run: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from productvlm.evaluation.evaluate import EvalConfig, evaluate

    faults = tmp_path / "faults.csv"
    test = load_prepared(calibrated_run["prepared"], splits=("test",))["test"]
    rows = test["source_row"][:3]
    faults.write_text("row,product_code,kind,detail\n" + "".join(
        f"{r},x,price_decimal_slip,\n" for r in rows))
    result = evaluate(EvalConfig(model=str(calibrated_run["run"]),
                                 data=calibrated_run["prepared"], out=tmp_path / "eval",
                                 max_new_tokens=48, report_to="none", faults=faults))
    m = result.metrics
    assert 0 <= m["price_interval_coverage"] <= 1 and m["price_interval_width"] > 0
    assert 0 <= m["category_ece"] <= 1 and "confidence_ece" in m
    assert m["audit_price_decimal_slip_rows"] == 3 and "audit_price_decimal_slip_auc" in m
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    curve = saved["calibration"]["coverage"]
    assert [c["nominal"] for c in curve] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9,
                                             0.95]
    assert curve[-1]["coverage"] >= curve[0]["coverage"]
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "interval held the true price" in html
    first = json.loads((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["uncertainty"]["price_low"] is not None


def test_odd_pictures_are_doubted_and_no_answer_is_cut_mid_field(
        calibrated_run: dict[str, Path]) -> None:
    """Every kind of non-product is low_confidence and said to be unlike the training photos;
    their answers parse whole (the title in the training titles' characters, a whole price),
    and a price outside its own interval is never reported without saying so."""
    from productvlm.rundir import RunDir
    from productvlm.synth.nonproducts import KINDS, non_products

    predictor = Predictor.load(calibrated_run["run"], batch_size=6, max_new_tokens=48)
    alphabet, _ = RunDir(calibrated_run["run"]).read_title_shape()
    pictures = non_products(2 * len(KINDS), seed=7)
    for (kind, _), p in zip(pictures, predictor.predict([im for _, im in pictures]),
                            strict=True):
        assert p.ok and p.low_confidence, (kind, p)
        assert "unlike the training photos" in p.doubt, (kind, p.doubt)
        assert set(p.title) <= set(alphabet) | {" "}, p.title
        assert p.raw.endswith(f"{p.price:,.2f}"), p.raw  # the price completed: "1,290.00"
        if not p.price_low <= p.price <= p.price_high:
            assert "outside its own 80% interval" in p.doubt


def test_an_answer_cut_at_the_token_limit_is_marked(calibrated_run: dict[str, Path],
                                                    photos: list[Any]) -> None:
    short = Predictor.load(calibrated_run["run"], max_new_tokens=4, constrained=False)
    for p in short.predict(photos[:2]):
        assert not p.ok and "cut at max_new_tokens=4" in p.error, p
