"""`productvlm evaluate` on a trained tiny run: outputs, counts, baselines, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from productvlm.errors import ProductVLMError
from productvlm.evaluation.evaluate import EvalConfig, evaluate
from productvlm.training.config import TrainConfig
from productvlm.training.trainer import train

EXE = Path(sys.executable).with_name("productvlm")


@pytest.fixture(scope="module")
def run_dir(base_model, prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalrun") / "run"
    train(TrainConfig(model=str(base_model), data=prepared, out=out, mode="full",
                      num_crops=1, max_length=256, batch_size=4, max_steps=2, eval_steps=2,
                      save_steps=2, eval_samples=0, report_to="none",
                      gradient_checkpointing=False, freeze_vision=False))
    return out


def test_evaluate_writes_report_metrics_and_every_row(run_dir, prepared, tmp_path) -> None:
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(model=str(run_dir), data=prepared, split="test", out=out,
                                 batch_size=4, max_new_tokens=48, report_to="none"))
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # the test split, every row answered
    assert result.metrics["parse_rate"] == 1.0  # constrained decoding: every answer parses
    assert {"constant", "category_oracle"} <= set(result.baselines)
    assert result.baselines["category_oracle"]["category_accuracy"] == 1.0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["price_mape"] == pytest.approx(result.metrics["price_mape"])
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "config.yaml").is_file()
    # categories are forced to those seen in training
    assert {r["parsed"]["category"] for r in rows} <= {"BAGS", "COATS", "SCARVES"}


def test_evaluate_bad_input(run_dir, prepared, tmp_path) -> None:
    with pytest.raises(ProductVLMError, match="split 'holdout' does not exist"):
        evaluate(EvalConfig(model=str(run_dir), data=prepared, split="holdout",
                            report_to="none"))
    proc = subprocess.run([str(EXE), "evaluate", "--model", str(tmp_path / "none"), "--data",
                           str(prepared), "--report-to", "none"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "model folder not found" in proc.stderr and "Traceback" not in proc.stderr
