"""`productvlm demo --model-family`: the demo's recipe on a tiny model of each family.

Small and fast (a few dozen products, one epoch): every stage runs and every answer parses.
How well each family learns at the demo's full size is in the README (measured, not tested).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from productvlm.demo import DemoConfig, demo
from productvlm.models.families import FAMILIES

EXE = Path(sys.executable).with_name("productvlm")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm", "phi4mm"])
def test_the_demo_recipe_runs_with_each_family(family: str, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = demo(DemoConfig(out=out, model_family=family, n=60, epochs=1,
                             vision_warmup_epochs=1, report_to="none"))
    config = json.loads((out / "base-model" / "config.json").read_text())
    assert config["model_type"] in FAMILIES[family].model_types
    for path in ("train/merged/model.safetensors", "train/vision_warmup.json",
                 "eval/metrics.json", "eval/report.html"):
        assert (out / path).is_file(), path
    assert result.metrics["parse_rate"] == 1.0
    assert "model_family: " + family in (out / "demo-config.yaml").read_text()


def test_an_unknown_family_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([str(EXE), "demo", "--model-family", "gemma3", "--out",
                           str(tmp_path / "d")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--model-family 'gemma3'" in proc.stderr and "phi4mm" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "d" / "catalog").exists()
