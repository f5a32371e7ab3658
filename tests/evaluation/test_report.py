"""The report: valid self-contained HTML with plots and tables, JSON files, console, W&B."""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from productvlm.answer import ProductFields as T
from productvlm.evaluation.baselines import compute_baselines, median_price
from productvlm.evaluation.metrics import UNPARSED, all_metrics
from productvlm.evaluation.outputs import console_table, log_to_wandb, write_predictions_jsonl
from productvlm.evaluation.report import best_and_worst, write_report
from productvlm.evaluation.rows import PredictionRow
from productvlm.inference import Prediction


def _png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rows(tmp_path) -> list[PredictionRow]:
    on_disk = tmp_path / "coat.png"
    Image.new("RGB", (80, 120), (200, 180, 140)).save(on_disk)
    spec = [  # truth, answer, image
        (
            T("Lola Bag", "BAGS", 2000.0),
            "Product: Lola Bag, Category: BAGS, Full Price: 2,000.00",
            Image.new("RGB", (100, 100), (180, 120, 60)),
        ),
        (
            T("Pocket Bag", "BAGS", 1000.0),
            "Product: Lola Bag, Category: BAGS, Full Price: 1,500",
            _png_bytes((90, 60, 30)),
        ),
        (
            T("Trench Coat", "COATS", 2500.0),
            "Product: Trench <Coat>, Category: BAGS, Price: 2,000",
            on_disk,
        ),
        (T("Silk Scarf", "SCARVES", 400.0), "I cannot tell", b"not an image"),
    ]
    return [
        PredictionRow(f"sku-{i}", t, Prediction.from_answer(a), img)
        for i, (t, a, img) in enumerate(spec)
    ]


TRAIN = [
    T("Lola Bag", "BAGS", 2000.0),
    T("Trench Coat", "COATS", 2000.0),
    T("Silk Scarf", "SCARVES", 500.0),
]


def _metrics(rows):
    targets, fallback = [r.truth for r in rows], median_price(TRAIN)
    model = all_metrics(targets, [r.prediction for r in rows], fallback_price=fallback)
    base = {
        k: all_metrics(targets, p, fallback_price=fallback)
        for k, p in compute_baselines(TRAIN, targets).items()
    }
    return model, base, fallback


class _Page(HTMLParser):
    """Collects every tag with its attributes, and each table as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _decode(uri: str) -> Image.Image:
    header, payload = uri.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    img = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    img.load()
    return img


def test_report_is_self_contained_html_with_plots_and_tables(tmp_path, rows):
    model, base, fallback = _metrics(rows)
    path = write_report(
        tmp_path / "out",
        rows,
        model,
        base,
        fallback_price=fallback,
        meta={"model": "runs/x", "split": "test"},
        n_gallery=2,
    )
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()

    # nothing loaded from outside the file
    assert not [t for t, a in page.tags if t in ("script", "link", "iframe")]
    refs = [v for _, a in page.tags for k, v in a.items() if k in ("src", "href") and v]
    assert refs and all(v.startswith("data:image/") for v in refs)
    images = {a["alt"]: _decode(a["src"]) for t, a in page.tags if t == "img"}
    assert images["predicted vs true price"].format == "PNG"
    assert images["price error histogram"].width > 300
    # gallery: 2 best + 2 worst; sku-3's bytes are not an image -> a placeholder, not a crash
    assert {"sku-0", "sku-1", "sku-2"} <= set(images) and "sku-3" not in images
    assert images["sku-0"].format == "JPEG"

    headline, confusion, per_cat = page.tables
    assert headline[0] == ["Metric", "Model", "Train median / majority", "True-category oracle"]
    by_metric = {r[0]: r[1:] for r in headline[1:]}
    # model price errors: 0, 500, 500, |2000 (training median) - 400| -> MAE 650.00
    assert by_metric["Price MAE"] == ["650.00", "775.00", "400.00"]
    assert by_metric["Category accuracy"] == ["50.0%", "50.0%", "100.0%"]
    assert by_metric["Parse rate"] == ["75.0%", "100.0%", "100.0%"]
    assert confusion[0] == ["true \\ predicted", "BAGS", "COATS", "SCARVES", UNPARSED, "n"]
    assert confusion[1:] == [
        ["BAGS", "2", "", "", "", "2"],
        ["COATS", "1", "", "", "", "1"],
        ["SCARVES", "", "", "", "1", "1"],
    ]
    assert [r[:3] for r in per_cat[1:]] == [
        ["BAGS", "2", "100.0%"],
        ["COATS", "1", "0.0%"],
        ["SCARVES", "1", "0.0%"],
    ]
    # the raw answer is HTML-escaped, never markup
    assert not [t for t, _ in page.tags if t == "coat"]

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"]["price_mae"] == pytest.approx(650.0)
    assert set(saved["baselines"]) == {"constant", "category_oracle"}
    assert saved["per_category"]["BAGS"]["n"] == 2 and saved["meta"]["split"] == "test"


def test_metrics_json_stays_valid_with_nan(tmp_path, rows):
    bad = rows[3]
    model = all_metrics([bad.truth], [bad.prediction])  # no fallback: price metrics are NaN
    assert math.isnan(model["price_mae"])
    write_report(tmp_path, [bad], model, {})
    text = (tmp_path / "metrics.json").read_text()
    assert (
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["metrics"][
            "price_mae"
        ]
        is None
    )


def test_predictions_jsonl(tmp_path, rows):
    path = write_predictions_jsonl(tmp_path / "p" / "predictions.jsonl", rows, fallback_price=1250)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == ["sku-0", "sku-1", "sku-2", "sku-3"]
    assert records[1]["truth"] == {"title": "Pocket Bag", "category": "BAGS", "price": 1000.0}
    assert records[1]["parsed"] == {"title": "Lola Bag", "category": "BAGS", "price": 1500.0}
    assert records[1]["scores"]["price_ape"] == 0.5 and records[1]["ok"] is True
    assert records[3]["ok"] is False and "does not match" in records[3]["error"]
    assert records[3]["answer"] == "I cannot tell" and records[3]["parsed"]["price"] is None


def test_best_and_worst_do_not_overlap(rows):
    best, worst = best_and_worst(rows, 3)
    assert [r.id for r in best] == ["sku-0", "sku-1"]  # half of 4 rows at most
    assert [r.id for r in worst] == ["sku-3", "sku-2"]
    best, worst = best_and_worst(rows[:1], 5)
    assert [r.id for r in best] == ["sku-0"] and worst == []


def test_console_table_prints_each_metric_beside_baselines(rows):
    model, base, _ = _metrics(rows)
    console = Console(record=True, width=160)
    console.print(console_table(model, base))
    lines = console.export_text().splitlines()
    mae = next(line for line in lines if "Price MAE" in line)
    cells = [c.strip() for c in mae.split("│") if c.strip()]
    assert cells == ["Price MAE", "650.00", "775.00", "400.00"]
    assert any("True-category oracle" in line for line in lines)


def test_log_to_wandb_offline_reads_back(tmp_path, rows, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, base, _ = _metrics(rows)
    run = wandb.init(project="productvlm-test", dir=tmp_path, mode="offline")
    try:
        log_to_wandb(run, rows, model, base)
    finally:
        run.finish()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # read the transaction log back with wandb's own reader
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = json.loads(out.stdout)["summary"]
    assert summary["eval/price_mae"] == pytest.approx(650.0)
    assert summary["eval/parse_rate"] == pytest.approx(0.75)
    assert summary["eval/baseline/category_oracle/category_accuracy"] == 1.0
    assert summary["eval/price_scatter"]["_type"] == "image-file"
    table = summary["eval/predictions"]
    assert table["_type"] == "table-file" and table["nrows"] == 4 and table["ncols"] == 10
    files = run_file.parent / "files"
    scatter = Image.open(files / summary["eval/price_scatter"]["path"])
    assert scatter.format == "PNG" and scatter.width > 300
    # the table with its images is the run_table artifact; its manifest names staged files
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert artifact["type"] == "run_table"
    staged = {e["path"]: Path(e["local_path"]) for e in artifact["manifest"]["contents"]}
    data = json.loads(staged["eval/predictions.table.json"].read_text())
    assert data["columns"][:3] == ["id", "image", "true_title"]
    assert [row[0] for row in data["data"]] == ["sku-0", "sku-1", "sku-2", "sku-3"]
    cells = [row[1] for row in data["data"]]
    assert cells[3] is None  # sku-3 has no decodable image
    for cell in cells[:3]:
        assert cell["_type"] == "image-file"
        assert Image.open(staged[cell["path"]]).format == "PNG"


def test_console_table_shows_deeper_category_levels():
    metrics = {"category_accuracy": 0.5, "category1_accuracy": 0.75, "category1_macro_f1": 0.6}
    console = Console(record=True, width=120)
    console.print(console_table(metrics, {"constant": {"category1_accuracy": 0.25}}))
    rows = [
        [c.strip() for c in line.split("│") if c.strip()]
        for line in console.export_text().splitlines()
        if "│" in line
    ]
    assert ["Category1 accuracy", "75.0%", "25.0%"] in rows
    assert ["Category1 macro-F1", "60.0%", "–"] in rows
    assert not any(r[0] == "Price MAE" for r in rows)  # absent metrics are not shown
