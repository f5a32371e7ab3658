"""config.py: defaults < YAML < flags, clear errors, saved and reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from productvlm.config import StageConfig, load_saved_config, resolve_config, save_config
from productvlm.errors import ProductVLMError


class DemoConfig(StageConfig):
    lr: float = 1e-4
    epochs: int = 1
    name: str = "run"
    out: Path = Path("runs/x")


def test_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  epochs: 3\n")
    cfg = resolve_config(DemoConfig, f, {"epochs": 5, "name": None}, section="train")
    assert (cfg.lr, cfg.epochs, cfg.name) == (0.001, 5, "run")


def test_whole_file_without_section(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\n")
    assert resolve_config(DemoConfig, f, section="train").lr == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lrr: 1\n", "c.yaml: unknown key 'lrr'"),
        ("epochs: many\n", "c.yaml: key 'epochs'"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("a: [1\n", "not valid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ProductVLMError, match=message.replace("[", r"\[")):
        resolve_config(DemoConfig, f)


def test_bad_flag_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProductVLMError, match="command-line flag: key 'epochs'"):
        resolve_config(DemoConfig, None, {"epochs": "x"})
    with pytest.raises(ProductVLMError, match="not found"):
        resolve_config(DemoConfig, tmp_path / "nope.yaml")


def test_save_and_reload(tmp_path: Path) -> None:
    cfg = DemoConfig(lr=3e-4, out=tmp_path / "o")
    path = save_config(cfg, tmp_path / "run")
    assert path.name == "config.yaml"
    assert load_saved_config(DemoConfig, tmp_path / "run") == cfg


def test_required_field_names_the_flag() -> None:
    class Needs(StageConfig):
        data_dir: Path

    with pytest.raises(ProductVLMError, match="'data_dir' is required; pass --data-dir"):
        resolve_config(Needs)
    assert resolve_config(Needs, None, {"data_dir": "x"}).data_dir == Path("x")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_training_config_is_valid(path: Path) -> None:
    from productvlm.training.config import TrainConfig

    cfg = resolve_config(TrainConfig, path, section="train")
    assert cfg.model and cfg.out
