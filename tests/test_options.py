"""Options are declared once: each command's options come from its stage config, so the help
holds every field's description and cannot drift; only typed flags override the YAML file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from productvlm.cli import app
from productvlm.config import StageConfig
from productvlm.errors import ProductVLMError
from productvlm.inference.options import BatchPredictionOptions, PredictionOptions
from productvlm.options import REGISTERED, Flag, config_command

SRC = Path(__file__).resolve().parents[1] / "src"


def _help(command: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``command --help`` with the table's borders and the wrapping taken out."""
    monkeypatch.setenv("COLUMNS", "240")  # rich's console width: no word is cut short
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def test_every_stage_command_is_built_from_its_config() -> None:
    assert set(REGISTERED) == {"synth", "prepare", "train", "evaluate", "predict", "serve",
                               "audit", "demo"}


@pytest.mark.parametrize("command", sorted(REGISTERED))
def test_help_holds_every_fields_description(command: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cls, options = REGISTERED[command]
    text = _help(command, monkeypatch)
    assert options
    for opt in options:
        description = opt.info.description
        assert description, f"{cls.__name__}.{opt.key} has no description (its --help text)"
        assert " ".join(description.split()) in text, (command, opt.key)
        assert opt.decls[0].split("/")[0] in text, (command, opt.key)
    for name, info in cls.model_fields.items():  # positional arguments are fields too
        if name not in {o.key.split(".")[0] for o in options}:
            assert info.description and " ".join(info.description.split()) in text, name


def test_help_shows_the_configs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help("predict", monkeypatch)
    assert re.search(r"--max-new-tokens .*?\[default: \(?64\)?\]", text)
    assert re.search(r"--precision <auto\|bf16\|fp16\|fp32>", text)
    demo = _help("demo", monkeypatch)
    assert "phi3v, qwen2_5_vl, smolvlm, phi4mm" in demo  # the help that had drifted


def test_the_answering_commands_share_one_sub_model() -> None:
    from productvlm.audit.config import AuditConfig
    from productvlm.evaluation.evaluate import EvalConfig
    from productvlm.predict import PredictConfig
    from productvlm.serving.config import ServeConfig

    for cls in (AuditConfig, EvalConfig, PredictConfig):
        assert issubclass(cls, BatchPredictionOptions), cls
    assert issubclass(ServeConfig, PredictionOptions)
    shared = BatchPredictionOptions.model_fields
    assert {"device", "precision", "batch_size", "max_new_tokens", "interval_level"} <= set(shared)
    for cls in (AuditConfig, EvalConfig, PredictConfig, ServeConfig):
        for name, info in PredictionOptions.model_fields.items():
            assert vars(cls).get("__annotations__", {}).get(name) is None, (cls, name)
            assert cls.model_fields[name].description == info.description


class Toy(StageConfig):
    name: str = Field("a", description="the name")
    level: float = Field(0.8, ge=0.5, description="the level")
    enabled: bool = Field(True, description="switch")
    kind: Literal["x", "y"] = Field("x", description="which kind")
    pairs: dict[str, str] = Field(default_factory=dict, description="the pairs")


def _toy_app(seen: list[Any]) -> typer.Typer:
    toy = typer.Typer()

    @config_command(toy, "toy", Toy, section="toy", flags={"name": Flag("--name", "-n")})
    def toy_command(cfg: Toy, extra: int = typer.Option(0, help="not a field")) -> None:
        seen.append((cfg, extra))

    @toy.command("other")
    def _other() -> None:  # a second command keeps `toy` a subcommand
        pass

    return toy


def test_only_typed_flags_override_the_file(tmp_path: Path) -> None:
    seen: list[Any] = []
    toy = _toy_app(seen)
    (tmp_path / "c.yaml").write_text("toy:\n  level: 0.9\n  enabled: false\n  pairs: {a: b}\n")
    runner = CliRunner()
    result = runner.invoke(toy, ["toy", "-c", str(tmp_path / "c.yaml"), "-n", "z",
                                 "--pairs", "c=d", "--extra", "3"])
    assert result.exit_code == 0, result.output
    cfg, extra = seen[-1]
    assert (cfg.name, cfg.level, cfg.enabled, cfg.kind, extra) == ("z", 0.9, False, "x", 3)
    assert cfg.pairs == {"a": "b", "c": "d"}  # merged over the file's, key by key
    result = runner.invoke(toy, ["toy", "-c", str(tmp_path / "c.yaml"), "--enabled", "--kind", "y"])
    assert result.exit_code == 0, result.output
    assert (seen[-1][0].enabled, seen[-1][0].kind, seen[-1][0].level) == (True, "y", 0.9)
    assert runner.invoke(toy, ["toy", "--kind", "z"]).exit_code == 2  # not a choice
    bad = runner.invoke(toy, ["toy", "--level", "0.1"])
    assert isinstance(bad.exception, ProductVLMError) and "level" in str(bad.exception)


def test_prepare_takes_the_fetch_settings_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    from productvlm.catalog import prepare as prepare_module

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(prepare_module, "prepare", lambda *a, **k: calls.append(k))
    result = CliRunner().invoke(app, ["prepare", "cat.csv", "-o", "out", "--timeout", "3",
                                      "--per-host", "2", "--map", "title=name",
                                      "price=list_price", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert calls[0]["settings"] == {"seed": 5, "map": {"title": "name", "price": "list_price"},
                                    "fetch": {"per_host": 2, "timeout_s": 3.0}}


def test_the_options_are_declared_once() -> None:
    """Before: 123 typer.Option lines written beside the configs; now a few that are not
    config fields (prepare's --out, train's --set, audit's fetch folders, export)."""
    count = sum(p.read_text().count("typer.Option(") for p in SRC.rglob("*.py"))
    assert count <= 12, count
