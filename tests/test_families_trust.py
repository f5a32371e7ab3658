"""Calibrated prices and the catalog audit with Qwen2.5-VL, SmolVLM and Phi-4-multimodal models.

The same calibration (price distribution scored on the generation's KV cache, category
probability from the image features, confidence) and the same `productvlm audit` as the
Phi-3-vision runs of test_trust.py and tests/audit, on a calibrated tiny run of each family
(tests/conftest.py's ``family_run``).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from productvlm.inference import Predictor

EXE = Path(sys.executable).with_name("productvlm")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def test_answers_carry_a_price_interval_and_a_confidence(family_run: dict[str, Path]) -> None:
    predictor = Predictor.load(family_run["run"], batch_size=4, max_new_tokens=48)
    assert predictor.calibration is not None
    photos = [Image.new("RGB", (140, 160), c) for c in ("tan", "navy", "firebrick")]
    for pred in predictor.predict(photos):
        assert pred.ok, pred.error
        assert pred.price_low <= pred.price_high
        grid = predictor.calibration.grid
        if grid[0] <= pred.price <= grid[-1]:  # an untrained model's answer can run out of
            # tokens after a price's first digit (Phi-4's tiny one does), off the price grid
            assert pred.price_low <= pred.price <= pred.price_high
        assert pred.interval_level == 0.8
        assert 0.0 <= pred.category_prob <= 1.0 and 0.0 <= pred.confidence <= 1.0
        distribution = np.exp(pred.signals.price_logprobs)
        assert 0.0 < distribution.sum() <= 1.0 + 1e-6  # a distribution over the price grid


def test_audit_ranks_every_row_or_says_why_it_failed(family_run: dict[str, Path],
                                                     tmp_path: Path) -> None:
    cat = family_run["audit_catalog"]
    out = tmp_path / "audit"
    proc = subprocess.run([str(EXE), "audit", "--model", str(family_run["run"]),
                           str(cat / "catalog.parquet"), "--out", str(out),
                           "--faults", str(cat / "faults.csv")],
                          capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stderr
    with (out / "audit.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (out / "failures.csv").open(newline="") as f:
        failed = list(csv.DictReader(f))
    summary = json.loads((out / "audit.json").read_text())
    assert summary["rows_in"] == 40 == len(rows) + len(failed)
    judged = [float(r["surprise"]) for r in rows if r["surprise"]]
    assert judged == sorted(judged, reverse=True) and len(judged) > 20
    assert (out / "audit.html").is_file()


def test_measuring_given_answers_equals_measuring_while_generating(
        family_run: dict[str, Path]) -> None:
    """Predictor.measure (one forced pass over prompt + answer: how the hf engine measures
    vLLM's answers) reads the same signals as measuring during generate."""
    _measured_alike(family_run["run"])


def test_measuring_given_answers_equals_measuring_while_generating_phi3v(
        calibrated_run: dict[str, Path]) -> None:
    _measured_alike(calibrated_run["run"])


def _measured_alike(run: Path) -> None:
    predictor = Predictor.load(run, batch_size=4, max_new_tokens=48)
    photos = [Image.new("RGB", size, c) for size, c in
              (((140, 160), "tan"), ((200, 120), "navy"), ((120, 220), "firebrick"))]
    grid = predictor.calibration.grid
    given = [("Tan Bag", "BAGS"), None, ("Navy Coat", "COATS")]
    texts, want = predictor.generate(photos, grid=grid, given=given)
    got = predictor.measure(photos, predictor.last_ids, texts, grid, given)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g.features, w.features, rtol=1e-4, atol=1e-5)
        assert abs(g.answer_logprob - w.answer_logprob) < 1e-4
        for a, b in ((g.price_logprobs, w.price_logprobs), (g.given_logprobs, w.given_logprobs)):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-4)
    # and so the calibrated answer: interval, category probability, confidence
    from productvlm.inference import Prediction

    for text, w, g in zip(texts, want, got, strict=True):
        a = predictor.calibrated(Prediction.from_answer(text), w)
        b = predictor.calibrated(Prediction.from_answer(text), g)
        assert (a.price_low, a.price_high) == (b.price_low, b.price_high)
        assert abs(a.confidence - b.confidence) < 1e-3
        assert abs(a.category_prob - b.category_prob) < 1e-3
