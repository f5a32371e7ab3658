"""The `productvlm` command line: each command is a thin call into a library function.

Usage: productvlm --help; productvlm COMMAND --help

Commands are registered by the stage modules' ``register(app)`` functions below, so a
command's options sit beside the code they drive. Every user-facing failure is a
``ProductVLMError``: ``main`` prints it as one line and exits with status 2, no traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from productvlm.errors import ProductVLMError

app = typer.Typer(
    name="productvlm",
    help="Fine-tune a vision-language model to read product photos (title, category, price) "
    "and audit a catalog's listed prices: synth, prepare, train, evaluate, predict, serve, "
    "audit, export (for vLLM); demo runs the pipeline on CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """productvlm: synth -> prepare -> train -> evaluate -> predict / serve / audit."""


@app.command()
def version() -> None:
    """Print the productvlm version."""
    from productvlm import __version__

    print(__version__)


def _register_commands() -> None:
    # Each stage module adds its own command(s); they import their heavy dependencies
    # (torch, transformers, datasets) inside the command functions, so --help stays quick.
    from productvlm import demo, export, predict
    from productvlm.audit import run as audit
    from productvlm.catalog import prepare
    from productvlm.evaluation import evaluate
    from productvlm.serving import app as serving_app
    from productvlm.synth import generate
    from productvlm.training import trainer

    for module in (generate, prepare, trainer, evaluate, predict, serving_app, audit, export,
                   demo):
        module.register(app)


_register_commands()


def main() -> None:
    """Entry point of the `productvlm` script."""
    try:
        app()  # standalone: click prints usage errors itself, with exit status 2
    except ProductVLMError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
