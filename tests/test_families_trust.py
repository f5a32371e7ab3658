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
