"""The CLI's contract: --help everywhere, one-line errors, status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from productvlm.cli import app
from productvlm.config import parse_pairs
from productvlm.errors import ProductVLMError

EXE = Path(sys.executable).with_name("productvlm")


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_parse_pairs() -> None:
    assert parse_pairs(["title=name", "price = list_price"], "--map") == {
        "title": "name",
        "price": "list_price",
    }
    with pytest.raises(ProductVLMError, match="--map 'title': expected KEY=VALUE"):
        parse_pairs(["title"], "--map")


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_everywhere(command: str | None) -> None:
    args = [str(EXE), *([command] if command else []), "--help"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_unknown_option_is_a_usage_error() -> None:
    out = subprocess.run([str(EXE), "version", "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
