"""Every shipped config loads, and each file starts with the command that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from productvlm.config import resolve_config
from productvlm.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(RUN_CONFIGS) >= 2 and len(ACCELERATE) >= 4


@pytest.mark.parametrize("path", RUN_CONFIGS + ACCELERATE, ids=lambda p: p.name)
def test_file_starts_with_its_command(path: Path) -> None:
    head = path.read_text().splitlines()[:4]
    assert head[0].startswith("#")
    assert any("productvlm" in line or "accelerate launch" in line for line in head)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_validates(path: Path) -> None:
    cfg = resolve_config(TrainConfig, path, section="train")
    assert cfg.model and cfg.out


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_is_a_launch_config(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(path)).num_processes >= 2  # accelerate's own reader
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP", "MULTI_CPU"}
    assert data["num_processes"] >= 2
    if data["distributed_type"] == "DEEPSPEED":
        assert data["deepspeed_config"]["zero_stage"] in (2, 3)
