"""The demo end to end, small: synth -> prepare -> tokenizer -> tiny model -> train -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from productvlm.demo import DemoConfig, demo

pytestmark = pytest.mark.slow


def test_small_demo_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = demo(DemoConfig(out=out, n=120, epochs=1, vision_warmup_epochs=1, report_to="none"))
    for path in ("catalog/catalog.parquet", "prepared/manifest.json", "base-model/config.json",
                 "train/merged/model.safetensors", "train/labels.json", "train/vision_warmup.json",
                 "eval/report.html", "eval/metrics.json", "demo-config.yaml"):
        assert (out / path).is_file(), path
    assert result.metrics["parse_rate"] == 1.0
    assert set(result.checks.values()) <= {True, False} and len(result.checks) == 5
    manifest = json.loads((out / "prepared/manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == 120
