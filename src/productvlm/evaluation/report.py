"""What evaluation leaves behind: predictions.jsonl, metrics.json, report.html, a console
table and W&B logs, all built from the same rows and metric dicts.

report.html is one self-contained file (plots and thumbnails are base64 data URIs, CSS is
inline) so it can be mailed, attached to a ticket or opened from an artifact store.

Example::

    rows = [PredictionRow(id, truth, raw_answer, parse_answer(raw_answer), image), ...]
    metrics = all_metrics([r.truth for r in rows], [r.parsed for r in rows], fallback_price=m)
    write_predictions_jsonl(out / "predictions.jsonl", rows, fallback_price=m)
    write_report(out, rows, metrics, {"constant": ..., "category_oracle": ...}, fallback_price=m)
    rich.print(console_table(metrics, baseline_metrics))
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from rich.table import Table

from productvlm.evaluation.baselines import BASELINE_NAMES
from productvlm.evaluation.metrics import UNPARSED, confusion_matrix, per_category, row_scores
from productvlm.prompts import ParsedAnswer, ProductFields, format_price


@dataclass
class PredictionRow:
    """One evaluated example.

    ``image``: a PIL image, a file path, encoded bytes or None. A row whose image could not
    be read keeps its place with ``answer=""`` and ``parsed=ParsedAnswer(error="image ...")``,
    so it is reported and scored as unparsed rather than dropped.
    """

    id: str
    truth: ProductFields
    answer: str
    parsed: ParsedAnswer
    image: Any = None


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


_LEVEL = re.compile(r"(category\d+)_(accuracy|macro_f1)")


def _metric_specs(metrics: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """METRICS plus deeper category levels (``category1_accuracy``, ...) found in ``metrics``."""
    levels = [(k, m[1].capitalize(), m[2]) for k in metrics if (m := _LEVEL.fullmatch(k))]
    return METRICS + [
        (k, f"{level} {'accuracy' if what == 'accuracy' else 'macro-F1'}", "pct", True)
        for k, level, what in levels
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


def _baseline_label(name: str) -> str:
    return BASELINE_NAMES.get(name, name)


# --------------------------------------------------------------------------- files


def _jsonable(x: Any) -> Any:
    """NaN/inf become null: metrics.json must stay valid JSON for every reader."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


def write_predictions_jsonl(
    path: str | Path, rows: Sequence[PredictionRow], *, fallback_price: float | None = None
) -> Path:
    """One JSON object a row: id, truth, raw answer, parsed fields, parse error, scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            parsed = r.parsed.to_dict()
            record = {
                "id": r.id,
                "truth": asdict(r.truth),
                "answer": r.answer,
                "parsed": {k: v for k, v in parsed.items() if k != "error"},
                "ok": r.parsed.ok,
                "error": r.parsed.error,
                "scores": row_scores(r.truth, r.parsed, fallback_price=fallback_price),
            }
            f.write(json.dumps(_jsonable(record), ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- plots


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # Figure() renders with Agg
    return buf.getvalue()


def _readable_prices(rows: Sequence[PredictionRow]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (r.truth.price, r.parsed.price)
        for r in rows
        if r.parsed.price is not None and math.isfinite(r.parsed.price) and r.parsed.price > 0
    ]
    arr = np.asarray(pairs, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def price_scatter(rows: Sequence[PredictionRow]) -> Figure:
    """Predicted against true price on log-log axes, with y = x and a ±25 % band."""
    true, pred = _readable_prices(rows)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    if len(true):
        lo, hi = min(true.min(), pred.min()) / 1.3, max(true.max(), pred.max()) * 1.3
        line = np.geomspace(lo, hi, 50)
        ax.fill_between(
            line, line * 0.75, line * 1.25, color="#2a9d8f", alpha=0.12, label="within 25%"
        )
        ax.plot(line, line, color="#264653", lw=1, label="predicted = true")
        ax.scatter(true, pred, s=14, alpha=0.6, color="#e76f51", edgecolors="none")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(loc="upper left", frameon=False, fontsize=8)
    n_missing = len(rows) - len(true)
    ax.set_title(
        f"Price: predicted vs true (n={len(true)}"
        + (f", {n_missing} unreadable not shown)" if n_missing else ")"),
        fontsize=10,
    )
    ax.set_xlabel("true price")
    ax.set_ylabel("predicted price")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def error_histogram(rows: Sequence[PredictionRow]) -> Figure:
    """Signed price error (predicted − true) / true in %, clipped to [−100 %, +300 %]."""
    true, pred = _readable_prices(rows)
    err = np.clip(100 * (pred - true) / true, -100, 300) if len(true) else np.zeros(0)
    # the axis follows the data (a good model's errors would vanish in a +-300 % axis)
    hi = float(np.clip(np.abs(err).max() * 1.1 if len(err) else 50, 30, 300))
    step = 5 if hi <= 100 else 10
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    ax.axvspan(-25, 25, color="#2a9d8f", alpha=0.12, label="within 25%")
    ax.axvline(0, color="#264653", lw=1)
    ax.hist(
        err,
        bins=np.arange(-min(hi, 100) - step, hi + step, step),
        color="#e76f51",
        edgecolor="white",
    )
    ax.set_xlim(-min(hi, 100) - step, hi + step)
    ax.set_title(f"Price error, % (n={len(err)}, clipped to -100 .. +300)", fontsize=10)
    ax.set_xlabel("(predicted − true) / true, %")
    ax.set_ylabel("rows")
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def _open_image(image: Any) -> Image.Image | None:
    try:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, bytes | bytearray):
            return Image.open(io.BytesIO(image))
        if isinstance(image, str | Path) and Path(image).is_file():
            return Image.open(image)
    except (OSError, ValueError):  # a broken image must not break the report
        return None
    return None


def _thumbnail(image: Any, size: int = 168) -> str | None:
    img = _open_image(image)
    if img is None:
        return None
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return _data_uri(buf.getvalue(), "image/jpeg")


# --------------------------------------------------------------------------- gallery


def _badness(r: PredictionRow, fallback_price: float | None) -> float:
    """How wrong one answer is: price APE (capped at 2) + wrong category + (1 − title F1)."""
    s = row_scores(r.truth, r.parsed, fallback_price=fallback_price)
    ape = 2.0 if s["price_ape"] is None else min(s["price_ape"], 2.0)
    return ape + (not s["category_correct"]) + (1 - s["title_token_f1"]) + (not r.parsed.ok)


def best_and_worst(
    rows: Sequence[PredictionRow], n: int = 8, *, fallback_price: float | None = None
) -> tuple[list[PredictionRow], list[PredictionRow]]:
    """The ``n`` best and ``n`` worst rows by :func:`_badness`; the two lists never overlap."""
    order = sorted(range(len(rows)), key=lambda i: (_badness(rows[i], fallback_price), i))
    best = order[: min(n, len(order) // 2 + len(order) % 2)]
    taken = set(best)
    worst = [i for i in reversed(order) if i not in taken][:n]
    return [rows[i] for i in best], [rows[i] for i in worst]


def _card(r: PredictionRow) -> str:
    thumb = _thumbnail(r.image)
    img = (
        f'<img src="{thumb}" alt="{escape(r.id)}">'
        if thumb
        else '<div class="noimg">no image</div>'
    )
    p, t = r.parsed, r.truth
    price = "–" if p.price is None else format_price(p.price)
    if p.price is not None and p.price >= 0:
        ape = (p.price - t.price) / t.price
        price += f' <span class="{"ok" if abs(ape) <= 0.25 else "bad"}">({100 * ape:+.0f}%)</span>'
    cat_cls = "ok" if row_scores(t, p)["category_correct"] else "bad"
    err = ""
    if p.error:  # show what the model actually said, so the failure can be read
        raw = r.answer if len(r.answer) <= 120 else r.answer[:117] + "..."
        err = f'<div class="err">{escape(p.error)}<br><i>"{escape(raw)}"</i></div>'
    pred = ""
    if p.title or p.category or p.price is not None:
        pred = (
            f'<div class="pred">{escape(p.title or "–")}<br><span class="{cat_cls}">'
            f"{escape(p.category or '–')}</span> · {price}</div>"
        )
    return (
        f'<figure class="card">{img}<figcaption><div class="id">{escape(r.id)}</div>'
        f'<div class="truth"><b>{escape(t.title)}</b><br>{escape(t.category)} · '
        f"{format_price(t.price)}</div>{pred}{err}</figcaption></figure>"
    )


# --------------------------------------------------------------------------- html

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d2733;
 margin:0;background:#f4f6f8}
main{max-width:1160px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px}
.meta{color:#5b6875;margin-bottom:8px}.meta span{margin-right:18px}
section{background:#fff;border-radius:10px;padding:16px 20px;box-shadow:0 1px 3px #0002}
table{border-collapse:collapse;width:100%}
table.headline{width:auto;min-width:62%}.headline td,.headline th{padding:5px 18px}
th,td{padding:5px 10px;text-align:right;border-bottom:1px solid #e6e9ec;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f7f8fa;font-weight:600}
td.win{color:#1a7f37;font-weight:600}td.model{background:#fbfcfe}
.plots{display:flex;gap:16px;flex-wrap:wrap}.plots img{width:calc(50% - 8px);min-width:380px}
.cm{width:auto}.cm td{text-align:center;min-width:42px;font-variant-numeric:tabular-nums}
.cm th{font-size:12px}
.cm th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;height:110px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.card{margin:0;background:#fafbfc;border:1px solid #e6e9ec;border-radius:8px;overflow:hidden}
.card img,.noimg{width:100%;height:150px;object-fit:contain;background:#fff;display:block}
.noimg{display:flex;align-items:center;justify-content:center;color:#99a}
figcaption{padding:6px 8px;font-size:12px}.id{color:#8a96a3;font-size:11px}
.truth{margin-bottom:4px}.pred{color:#34495e;border-top:1px dashed #dde;padding-top:4px}
.pred:before{content:"predicted: ";color:#8a96a3}
.ok{color:#1a7f37}.bad{color:#c0392b}.err{color:#c0392b;font-size:11px}
.note{color:#5b6875;font-size:12px;margin-top:8px}
"""


def _headline(metrics: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{escape(_baseline_label(n))}</th>" for n in baselines)
    body = []
    for key, label, kind, higher in _metric_specs(metrics):
        if key not in metrics:
            continue
        v = metrics[key]
        others = [b.get(key) for b in baselines.values()]
        finite = [o for o in others if isinstance(o, int | float) and math.isfinite(o)]
        # "win": the model beats every baseline on this metric
        win = (
            isinstance(v, int | float)
            and math.isfinite(v)
            and finite
            and all((v > o) if higher else (v < o) for o in finite)
        )
        cells = "".join(f"<td>{format_metric(o, kind)}</td>" for o in others)
        body.append(
            f'<tr><td>{escape(label)}</td><td class="model{" win" if win else ""}">'
            f"{format_metric(v, kind)}</td>{cells}</tr>"
        )
    return (
        f'<table class="headline"><thead><tr><th>Metric</th><th>Model</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table>"
    )


def _confusion(rows: Sequence[PredictionRow], field: str, top: int = 12) -> str:
    """Confusion matrix as an HTML table, cells shaded by their share of the true class."""
    names, cols, matrix = confusion_matrix(
        [r.truth for r in rows], [r.parsed for r in rows], field=field
    )
    keep = names[:top]  # the largest classes; the rest fold into "(other)"
    col_keep = keep + (["(other)"] if len(cols) - 1 > len(keep) else []) + [UNPARSED]
    row_keep = keep + (["(other)"] if len(names) > len(keep) else [])
    folded = np.zeros((len(row_keep), len(col_keep)), dtype=int)
    for i, name in enumerate(names):
        ri = row_keep.index(name if name in keep else "(other)")
        for j, col in enumerate(cols):
            cj = col_keep.index(col if col in keep or col == UNPARSED else "(other)")
            folded[ri, cj] += matrix[i][j]
    head = "".join(f'<th class="col">{escape(c)}</th>' for c in col_keep)
    body = []
    for i, name in enumerate(row_keep):
        total = max(folded[i].sum(), 1)
        cells = []
        for j, col in enumerate(col_keep):
            n = int(folded[i, j])
            # green on the diagonal, red off it, grey where "(other)" mixes both
            hue = "42,157,143" if col == name else "231,111,81"
            hue = "120,130,140" if "(other)" in (col, name) else hue
            style = f' style="background:rgba({hue},{0.85 * n / total:.2f})"' if n else ""
            cells.append(f"<td{style}>{n or ''}</td>")
        body.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}<td>{folded[i].sum()}</td></tr>")
    note = (
        f'<div class="note">The {top} largest categories; the other {len(names) - top} '
        "are folded into (other).</div>"
        if len(names) > top
        else ""
    )
    return (
        f'<table class="cm"><thead><tr><th>true \\ predicted</th>{head}<th>n</th></tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table>{note}"
    )


def _per_category_table(breakdown: Mapping[str, Mapping[str, float]]) -> str:
    cols = [
        ("n", "n", "int"),
        ("accuracy", "Accuracy", "pct"),
        ("f1", "F1", "pct"),
        ("price_mae", "Price MAE", "money"),
        ("price_median_ape", "Median APE", "pct"),
        ("price_within_25pct", "Within 25%", "pct"),
        ("title_token_f1", "Title F1", "pct"),
    ]
    head = "".join(f"<th>{label}</th>" for _, label, _ in cols)
    body = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{format_metric(m[k], kind)}</td>" for k, _, kind in cols)
        + "</tr>"
        for name, m in breakdown.items()
    )
    return f"<table><thead><tr><th>Category</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    out_dir: str | Path,
    rows: Sequence[PredictionRow],
    metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Mapping[str, Any]],
    *,
    fallback_price: float | None = None,
    meta: Mapping[str, Any] | None = None,
    field: str = "category",
    n_gallery: int = 12,
    title: str = "productvlm evaluation",
) -> Path:
    """Write ``metrics.json`` and a self-contained ``report.html`` into ``out_dir``.

    ``meta`` (model, split, date, ...) is shown in the page header and saved in
    metrics.json. Returns the path of report.html.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    breakdown = per_category(
        [r.truth for r in rows],
        [r.parsed for r in rows],
        field=field,
        fallback_price=fallback_price,
    )
    (out / "metrics.json").write_text(
        json.dumps(
            _jsonable(
                {
                    "metrics": dict(metrics),
                    "baselines": {k: dict(v) for k, v in baseline_metrics.items()},
                    "per_category": breakdown,
                    "fallback_price": fallback_price,
                    "meta": dict(meta or {}),
                }
            ),
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )

    best, worst = best_and_worst(rows, n_gallery, fallback_price=fallback_price)
    header = "".join(
        f"<span><b>{escape(str(k))}</b>: {escape(str(v))}</span>"
        for k, v in {"rows": len(rows), **dict(meta or {})}.items()
    )
    scatter, hist = _data_uri(_png(price_scatter(rows))), _data_uri(_png(error_histogram(rows)))
    fallback = (
        f"Answers without a readable price are scored at the training median "
        f"({format_price(fallback_price)})."
        if fallback_price is not None
        else "Answers without a readable price are left out of the price metrics."
    )
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1><div class="meta">{header}</div>
<h2>Metrics beside baselines</h2><section>{_headline(metrics, baseline_metrics)}
<div class="note">Green: the model beats every baseline. Baselines are fitted on the training
split; the oracle is told the true category. Unparsed answers count as wrong. {fallback}</div>
</section>
<h2>Price</h2><section class="plots"><img src="{scatter}" alt="predicted vs true price">
<img src="{hist}" alt="price error histogram"></section>
<h2>Category confusion matrix</h2><section style="overflow-x:auto">{_confusion(rows, field)}
</section>
<h2>Per category</h2><section>{_per_category_table(breakdown)}</section>
<h2>Best cases</h2><section class="gallery">{"".join(_card(r) for r in best)}</section>
<h2>Worst cases</h2><section class="gallery">{"".join(_card(r) for r in worst)}</section>
</main></body></html>
"""
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- console, W&B


def console_table(
    metrics: Mapping[str, Any], baseline_metrics: Mapping[str, Mapping[str, Any]]
) -> Table:
    """A rich table of every metric beside the baselines: ``rich.print(console_table(m, b))``."""
    table = Table(title="Evaluation", title_style="bold")
    table.add_column("metric")
    table.add_column("model", justify="right", style="bold")
    for name in baseline_metrics:
        table.add_column(_baseline_label(name), justify="right", style="dim")
    for key, label, kind, _ in _metric_specs(metrics):
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
) -> None:
    """Log to an active W&B run: metrics (also in the summary), plots and a predictions table.

    Keys: ``{prefix}/{metric}``, ``{prefix}/baseline/{name}/{metric}``,
    ``{prefix}/price_scatter``, ``{prefix}/price_error_hist``, ``{prefix}/predictions``.
    """
    import wandb  # imported here: the rest of the module works without W&B set up

    flat = {f"{prefix}/{k}": v for k, v in _jsonable(dict(metrics)).items() if v is not None}
    for name, bm in baseline_metrics.items():
        flat |= {
            f"{prefix}/baseline/{name}/{k}": v
            for k, v in _jsonable(dict(bm)).items()
            if v is not None
        }
    table = wandb.Table(
        columns=[
            "id",
            "image",
            "true_title",
            "true_category",
            "true_price",
            "answer",
            "title",
            "category",
            "price",
            "error",
        ]
    )
    for r in rows[:max_table_rows]:
        img = _open_image(r.image)
        table.add_data(
            r.id,
            wandb.Image(img.convert("RGB")) if img is not None else None,
            r.truth.title,
            r.truth.category,
            r.truth.price,
            r.answer,
            r.parsed.title,
            r.parsed.category,
            r.parsed.price,
            r.parsed.error,
        )
    plots = {
        f"{prefix}/price_scatter": wandb.Image(Image.open(io.BytesIO(_png(price_scatter(rows))))),
        f"{prefix}/price_error_hist": wandb.Image(
            Image.open(io.BytesIO(_png(error_histogram(rows))))
        ),
    }
    run.log({**flat, **plots, f"{prefix}/predictions": table})
    run.summary.update(flat)
