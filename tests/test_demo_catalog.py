"""`productvlm demo --catalog FILE [--preset P] [--map FIELD=COLUMN ...]`: the demo's recipe on
the user's own catalog, read by prepare (its presets, column map and errors), not synth's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw
from typer.testing import CliRunner

from productvlm.cli import app
from productvlm.errors import ProductVLMError

#: three kinds of product, each drawn as its own shape and colour, with a price band
KINDS = {
    "bags": ("ellipse", (150, 40, 40), 900),
    "scarves": ("rectangle", (40, 120, 160), 300),
    "shoes": ("polygon", (60, 150, 60), 600),
}


def _photo(path: Path, kind: str, size: int, shot: int) -> None:
    """A light studio photo of one product: ``kind``'s shape, larger for a larger size, placed
    a little differently in each shot (prepare keeps byte-identical photos in one split)."""
    shape, colour, _ = KINDS[kind]
    img = Image.new("RGB", (160, 200), (236, 234, 230))
    draw, r = ImageDraw.Draw(img), 30 + 12 * size
    x, y = 80 + 3 * (shot % 5 - 2), 100 + 3 * (shot % 7 - 3)
    box = (x - r, y - r, x + r, y + r)
    if shape == "polygon":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    else:
        getattr(draw, shape)(box, fill=colour)
    img.save(path)


def write_catalog(folder: Path, n_per_kind: int = 20) -> Path:
    """A CSV in the user's own layout (its photo column named photo_path, paths relative to
    the CSV), with PNGs drawn here; one row has no photo file, as real catalogs do."""
    (folder / "photos").mkdir(parents=True)
    rows = []
    for kind, (_, _, base) in KINDS.items():
        for i in range(n_per_kind):
            size = i % 3
            name = f"photos/{kind}-{i}.png"
            _photo(folder / name, kind, size, i)
            title = f"{('Small', 'Medium', 'Large')[size]} {kind[:-1].title()}"
            rows.append({"sku": f"{kind}-{i}", "title": title, "category": kind,
                         "price": base * (1 + size), "photo_path": name})
    rows.append({"sku": "ghost", "title": "Small Bag", "category": "bags", "price": 900,
                 "photo_path": "photos/missing.png"})
    path = folder / "my-catalog.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _demo(*args: str) -> object:
    return CliRunner().invoke(app, ["demo", *args])


def test_a_missing_catalog_gives_prepares_one_line_error(tmp_path: Path) -> None:
    result = _demo("--catalog", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "d"))
    assert isinstance(result.exception, ProductVLMError)
    assert str(result.exception) == (f"{tmp_path / 'nope.csv'}: no such file or folder, "
                                     "and not a Hugging Face dataset id")
    assert not (tmp_path / "d" / "prepared").exists()


def test_a_missing_column_names_the_columns_present(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "cat", n_per_kind=2)
    result = _demo("--catalog", str(catalog), "--preset", "simple", "--out", str(tmp_path / "d"))
    assert isinstance(result.exception, ProductVLMError)
    message = str(result.exception)
    assert "column 'image' (for image) is missing" in message, message
    assert "sku, title, category, price, photo_path" in message and "\n" not in message


def test_map_without_a_catalog_is_an_error(tmp_path: Path) -> None:
    result = _demo("--map", "image=photo_path", "--out", str(tmp_path / "d"))
    assert isinstance(result.exception, ProductVLMError)
    assert "--catalog" in str(result.exception)


def test_demo_learns_a_catalog_of_ones_own(tmp_path: Path) -> None:
    """The recipe, small, on the CSV above: prepare maps its columns (a --map pair given as a
    second word after --map too), the missing photo lands in failures.csv, and the tiny model
    learns the three kinds far past the most frequent one."""
    catalog = write_catalog(tmp_path / "cat")
    out = tmp_path / "demo"
    result = _demo("--catalog", str(catalog), "--preset", "none", "--map", "title=title",
                   "category=category", "price=price", "image=photo_path",
                   "product_code=sku", "--out", str(out), "--epochs", "6",
                   "--report-to", "none", "-c", str(_small_config(tmp_path)))
    assert result.exit_code == 0, (result.output, result.exception)
    assert not (out / "catalog").exists()  # no synth catalog
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == 61
    failures = (out / "prepared" / "failures.csv").read_text()
    assert "ghost" in failures
    report = json.loads((out / "eval" / "metrics.json").read_text())
    metrics, majority = report["metrics"], report["baselines"]["constant"]
    assert metrics["parse_rate"] == 1.0
    assert metrics["category_accuracy"] >= 0.8 > majority["category_accuracy"] + 0.3, report
    assert (out / "train" / "curves.png").is_file()


def _small_config(tmp_path: Path) -> Path:
    """A demo config at a size that trains in under a minute on 2 cores (17 s measured)."""
    path = tmp_path / "demo.yaml"
    path.write_text("demo:\n  vision_warmup_epochs: 20\n  batch_size: 8\n")
    return path


def test_curves_are_drawn_from_the_train_log_without_wandb(tmp_path: Path) -> None:
    """train_log.jsonl as the Trainer writes it (loss entries, eval entries, and the
    callback's answer figures as entries of their own) -> a PNG; no loss, no picture."""
    from productvlm.demo import plot_curves

    log = tmp_path / "train_log.jsonl"
    entries = [{"loss": 6.0 / (s + 1), "epoch": s / 10, "step": s} for s in range(1, 30)]
    entries += [{"eval_loss": 0.5, "epoch": 1.0, "step": 10},
                {"eval_gen_category_accuracy": 0.6, "eval_gen_title_token_f1": 0.5,
                 "eval_gen_parse_rate": 1.0, "step": 10}]
    log.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    png = plot_curves(log, tmp_path / "curves.png")
    assert png == tmp_path / "curves.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 400
    log.write_text(json.dumps({"train_runtime": 3.0, "step": 29}) + "\n")
    assert plot_curves(log, tmp_path / "none.png") is None
    assert plot_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
