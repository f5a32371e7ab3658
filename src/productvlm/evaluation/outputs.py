"""What evaluation leaves behind besides report.html: predictions.jsonl, the console table
and the W&B logs, all built from the same rows and metric dicts (see report.py for the page).

Example::

    rows = [PredictionRow(id, truth, prediction, image), ...]  # prediction: Predictor's record
    metrics = all_metrics([r.truth for r in rows], [r.prediction for r in rows], fallback_price=m)
    write_predictions_jsonl(out / "predictions.jsonl", rows, fallback_price=m)
    rich.print(console_table(metrics, baseline_metrics))
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.table import Table

from productvlm.answer import DEFAULT_SCHEMA, AnswerSchema, format_price
from productvlm.evaluation.baselines import BASELINE_NAMES
from productvlm.evaluation.metrics import row_scores
from productvlm.evaluation.plots import error_histogram, image_or_none, png, price_scatter
from productvlm.evaluation.rows import PredictionRow

#: Headline metrics in display order: key, label, format, whether higher is better.
METRICS: list[tuple[str, str, str, bool]] = [
    ("price_mae", "Price MAE", "money", False),
    ("price_mape", "Price MAPE", "pct", False),
    ("price_median_ape", "Price median APE", "pct", False),
    ("price_within_10pct", "Price within 10%", "pct", True),
    ("price_within_25pct", "Price within 25%", "pct", True),
    ("price_rmse_log", "RMSE of log price", "float", False),
    ("category_accuracy", "Category accuracy", "pct", True),
    ("category_macro_f1", "Category macro-F1", "pct", True),
    ("title_exact_match", "Title exact match", "pct", True),
    ("title_token_f1", "Title token F1", "pct", True),
    ("title_chrf", "Title chrF (0-100)", "score", True),
    ("parse_rate", "Parse rate", "pct", True),
]


#: the metrics of a label, text or number answer field (metrics.field_metrics): suffix ->
#: (words, higher is better)
_FIELD_METRIC = re.compile(r"([a-z][a-z0-9_]*?)_(accuracy|macro_f1|token_f1|mape|within_25pct)")
_FIELD_WORDS = {"accuracy": ("accuracy", True), "macro_f1": ("macro-F1", True),
                "token_f1": ("token F1", True), "mape": ("MAPE", False),
                "within_25pct": ("within 25%", True)}


def metric_specs(metrics: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """METRICS plus those of deeper category levels (``category1_accuracy``, ...) and of the
    answer's extra fields (``colour_accuracy``, ``note_token_f1``, ``size_mape``) found in
    ``metrics``, in their order."""
    known = {k for k, *_ in METRICS}
    extra = [(k, m[1], m[2]) for k in metrics
             if k not in known and (m := _FIELD_METRIC.fullmatch(k))]
    return METRICS + [
        (k, f"{name.replace('_', ' ').capitalize()} {_FIELD_WORDS[what][0]}", "pct",
         _FIELD_WORDS[what][1])
        for k, name, what in extra
    ]


def format_metric(value: Any, kind: str) -> str:
    """``format_metric(0.1234, "pct") == "12.3%"``; missing or NaN values show as "–"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "money":
        return format_price(value)
    if kind == "score":
        return f"{value:.1f}"
    return f"{value:.3f}" if kind == "float" else str(value)


def baseline_label(name: str) -> str:
    return BASELINE_NAMES.get(name, name)


def jsonable(x: Any) -> Any:
    """NaN/inf become null: metrics.json must stay valid JSON for every reader."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


def write_predictions_jsonl(
    path: str | Path, rows: Sequence[PredictionRow], *, fallback_price: float | None = None,
    schema: AnswerSchema = DEFAULT_SCHEMA,
) -> Path:
    """One JSON object a row: id, truth, raw answer, parsed fields, parse error, scores (the
    fields and scores of ``schema``'s extra fields too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            p = r.prediction
            record = {
                "id": r.id,
                "truth": r.truth.values(),
                "answer": r.answer,
                "parsed": p.values(),
                "uncertainty": {"price_low": p.price_low, "price_high": p.price_high,
                                "interval_level": p.interval_level,
                                "category_prob": p.category_prob, "confidence": p.confidence},
                "ok": r.prediction.ok,
                "error": r.prediction.error,
                "scores": row_scores(r.truth, r.prediction, fallback_price=fallback_price,
                                     schema=schema),
            }
            f.write(json.dumps(jsonable(record), ensure_ascii=False) + "\n")
    return path


def console_table(
    metrics: Mapping[str, Any], baseline_metrics: Mapping[str, Mapping[str, Any]]
) -> Table:
    """A rich table of every metric beside the baselines: ``rich.print(console_table(m, b))``."""
    table = Table(title="Evaluation", title_style="bold")
    table.add_column("metric")
    table.add_column("model", justify="right", style="bold")
    for name in baseline_metrics:
        table.add_column(baseline_label(name), justify="right", style="dim")
    for key, label, kind, _ in metric_specs(metrics):
        if key in metrics:
            table.add_row(
                label,
                format_metric(metrics[key], kind),
                *(format_metric(b.get(key), kind) for b in baseline_metrics.values()),
            )
    return table


def log_to_wandb(
    run: Any,
    rows: Sequence[PredictionRow],
    metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Mapping[str, Any]],
    *,
    prefix: str = "eval",
    max_table_rows: int = 500,
    uncertainty: Mapping[str, Any] | None = None,
) -> None:
    """Log to an active W&B run: metrics (also in the summary), plots and a predictions table.

    Keys: ``{prefix}/{metric}``, ``{prefix}/baseline/{name}/{metric}``,
    ``{prefix}/price_scatter``, ``{prefix}/price_error_hist``, ``{prefix}/predictions``.
    """
    import wandb  # imported here: the rest of the module works without W&B set up

    flat = {f"{prefix}/{k}": v for k, v in jsonable(dict(metrics)).items() if v is not None}
    for name, bm in baseline_metrics.items():
        flat |= {
            f"{prefix}/baseline/{name}/{k}": v
            for k, v in jsonable(dict(bm)).items()
            if v is not None
        }
    names = list(rows[0].truth.values()) if rows else ["title", "category", "price"]
    table = wandb.Table(columns=["id", "image", *(f"true_{n}" for n in names), "answer",
                                 *names, "error"])
    for r in rows[:max_table_rows]:
        img = image_or_none(r.image)
        table.add_data(
            r.id,
            wandb.Image(img.convert("RGB")) if img is not None else None,
            *(r.truth.get(n) for n in names),
            r.answer,
            *(r.prediction.get(n) for n in names),
            r.prediction.error,
        )
    plots = {
        f"{prefix}/price_scatter": wandb.Image(Image.open(io.BytesIO(png(price_scatter(rows))))),
        f"{prefix}/price_error_hist": wandb.Image(
            Image.open(io.BytesIO(png(error_histogram(rows))))
        ),
    }
    if uncertainty and uncertainty.get("coverage"):
        from productvlm.evaluation.uncertainty import calibration_figure

        plots[f"{prefix}/calibration"] = wandb.Image(
            Image.open(io.BytesIO(png(calibration_figure(dict(uncertainty))))))
    run.log({**flat, **plots, f"{prefix}/predictions": table})
    run.summary.update(flat)
