"""`productvlm evaluate --ray`: the split answered on a Ray Data pool of model actors writes
the predictions, metrics and report one process writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from productvlm.evaluation.evaluate import EvalConfig, evaluate


def _lines(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r.pop("latency_ms", None)  # wall time of the row's batch
    return rows


def test_evaluate_on_a_ray_pool_writes_what_one_process_writes(calibrated_run: dict,
                                                                tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    faults = calibrated_run["prepared"].parent / "catalog" / "faults.csv"
    outs = {}
    for ray in (None, "local"):
        outs[ray] = tmp_path / f"eval-{ray}"
        evaluate(EvalConfig(model=str(calibrated_run["run"]), data=calibrated_run["prepared"],
                            split="test", out=outs[ray], batch_size=4, max_new_tokens=48,
                            report_to="none", faults=faults,
                            ray=ray, ray_actors=2))
    one, pool = outs[None], outs["local"]
    assert _lines(pool / "predictions.jsonl") == _lines(one / "predictions.jsonl")
    metrics = [json.loads((o / "metrics.json").read_text()) for o in (one, pool)]
    assert metrics[1] == metrics[0]
    assert "price_interval_coverage" in metrics[0]["metrics"]
    assert faults.is_file() and "audit_clean_flag_rate" in metrics[0]["metrics"]
    assert (pool / "report.html").stat().st_size > 10_000
