"""`productvlm predict`: title, category and price for photos given as paths, globs or URLs.

Usage:
    productvlm predict --model runs/demo/train shots/*.jpg https://example.com/bag.jpg
    productvlm predict --model runs/demo/train --json shots/*.jpg > answers.jsonl

Images are read through the catalog's fetch rules (timeouts, size and pixel caps, EXIF
orientation, RGB); an unreadable one is reported in its row and the others are answered.
Exit status: 0 when every image was read, 1 when some were not, 2 on a bad model or flag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.inference import Predictor


def expand_inputs(inputs: Sequence[str]) -> list[tuple[str, str | None]]:
    """Each argument -> (name shown, source to fetch); globs expand to their matches, and a
    glob with no match becomes one row with source None. Local paths become absolute."""
    import glob
    import os

    out: list[tuple[str, str | None]] = []
    for arg in inputs:
        if arg.lower().startswith(("http://", "https://", "file:")):
            out.append((arg, arg))
        elif any(c in arg for c in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            out += [(m, str(Path(m).absolute())) for m in matches] or [(arg, None)]
        else:
            out.append((arg, str(Path(arg).expanduser().absolute())))
    return out


def read_images(sources: list[tuple[str, str | None]], local_root: Path | None) -> list[Any]:
    """A PIL image or an error message per source, through the catalog's fetch rules."""
    from productvlm.catalog.fetch import FetchConfig, fetch_images, open_image

    root = (local_root or Path("/")).expanduser().resolve()
    cfg = FetchConfig(local_root=root, cache_dir=None, retries=1)
    wanted = [s for _, s in sources if s is not None]
    results = iter(fetch_images(wanted, cfg, progress=False))
    out: list[Any] = []
    for _, source in sources:
        if source is None:
            out.append("no file matches this pattern")
            continue
        r = next(results)
        if not r.ok:
            out.append(r.error or "unreadable")
            continue
        try:
            out.append(open_image(r.data))
        except ProductVLMError as e:
            out.append(str(e))
    return out


def predict_files(model: str, inputs: Sequence[str], *, json_lines: bool = False,
                  local_root: Path | None = None, **load: Any) -> int:
    """Print an answer (or the reason there is none) per image; 0 when every image was read,
    1 when some were not. ``load`` goes to :meth:`Predictor.load`."""
    import sys

    from rich.console import Console
    from rich.table import Table

    predictor = Predictor.load(model, **load)
    sources = expand_inputs(inputs)
    images = read_images(sources, local_root)
    good = [im for im in images if not isinstance(im, str)]
    preds = iter(predictor.predict(good, progress=sys.stderr.isatty()))
    rows: list[dict[str, Any]] = []
    for (name, _), image in zip(sources, images, strict=True):
        if isinstance(image, str):
            rows.append({"image": name, "ok": False, "title": None, "category": None,
                         "price": None, "currency": None, "raw": None, "error": image})
        else:
            rows.append({"image": name, **next(preds).to_dict()})
    if json_lines:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        table = Table("image", "title", "category", "price", "note")
        for row in rows:
            price = (f"{row['price']:,.2f} {row['currency'] or ''}".strip()
                     if row["price"] is not None else "")
            table.add_row(row["image"], row["title"] or "", row["category"] or "", price,
                          f"[red]{row['error']}[/]" if row["error"] else "")
        Console(soft_wrap=False).print(table)
    unread = sum(isinstance(im, str) for im in images)
    if unread:
        print(f"{unread} of {len(images)} images could not be read", file=sys.stderr)
    return 1 if unread else 0


def register(app: Any) -> None:
    """Add the `predict` command to the typer app."""
    import typer

    @app.command("predict")
    def predict_command(
        images: list[str] = typer.Argument(..., help="image paths, globs or URLs"),
        model: str = typer.Option(..., "--model", "-m",
                                  help="run directory, model folder or Hub id"),
        json_lines: bool = typer.Option(False, "--json", help="one JSON object per line"),
        batch_size: int = typer.Option(16, min=1, help="images per generation batch"),
        constrained: bool = typer.Option(True, "--constrained/--no-constrained",
                                         help="force answers into the target format"),
        local_root: Path | None = typer.Option(
            None, help="read local files only inside this folder (default: any file named)"),
        max_new_tokens: int = typer.Option(64, min=1, help="longest answer, in tokens"),
        num_crops: int | None = typer.Option(None, min=1, help="override the run's num_crops"),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    ) -> None:
        """Title, category and price for each product photo. Exit 1 if an image was unreadable."""
        code = predict_files(model, images, json_lines=json_lines, local_root=local_root,
                             batch_size=batch_size, constrained=constrained,
                             max_new_tokens=max_new_tokens, num_crops=num_crops, device=device)
        raise typer.Exit(code)
