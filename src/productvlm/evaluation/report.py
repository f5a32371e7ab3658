"""report.html: one self-contained page per evaluation (plots and thumbnails are base64
data URIs, CSS is inline) so it can be mailed, attached to a ticket or opened from an
artifact store; metrics.json beside it.

Example::

    write_report(out, rows, metrics, {"constant": ..., "category_oracle": ...}, fallback_price=m)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from productvlm.answer import DEFAULT_SCHEMA, AnswerField, AnswerSchema, format_price
from productvlm.evaluation.metrics import (
    UNPARSED,
    confusion_matrix,
    per_category,
    row_scores,
    same_label,
)
from productvlm.evaluation.outputs import (
    baseline_label,
    format_metric,
    jsonable,
    metric_specs,
)
from productvlm.evaluation.plots import data_uri, error_histogram, png, price_scatter, thumbnail
from productvlm.evaluation.rows import PredictionRow


def _badness(r: PredictionRow, fallback_price: float | None) -> float:
    """How wrong one answer is: price APE (capped at 2) + wrong category + (1 − title F1)."""
    s = row_scores(r.truth, r.prediction, fallback_price=fallback_price)
    ape = 2.0 if s["price_ape"] is None else min(s["price_ape"], 2.0)
    return ape + (not s["category_correct"]) + (1 - s["title_token_f1"]) + (not r.prediction.ok)


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
    thumb = thumbnail(r.image)
    img = (
        f'<img src="{thumb}" alt="{escape(r.id)}">'
        if thumb
        else '<div class="noimg">no image</div>'
    )
    p, t = r.prediction, r.truth
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
        said = "".join(  # the extra fields, each marked right or wrong
            f' · <span class="{"ok" if _same(p.get(n), t.get(n)) else "bad"}">'
            f"{escape(_shown(p.get(n)))}</span>" for n in t.extra)
        pred = (
            f'<div class="pred">{escape(p.title or "–")}<br><span class="{cat_cls}">'
            f"{escape(p.category or '–')}</span> · {price}{said}</div>"
        )
    truth_extra = "".join(f" · {escape(_shown(v))}" for v in t.extra.values())
    return (
        f'<figure class="card">{img}<figcaption><div class="id">{escape(r.id)}</div>'
        f'<div class="truth"><b>{escape(t.title)}</b><br>{escape(t.category)} · '
        f"{format_price(t.price)}{truth_extra}</div>{pred}{err}</figcaption></figure>"
    )


def _shown(value: Any) -> str:
    if value is None:
        return "–"
    return format_price(value) if isinstance(value, float) else str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float):
        return a is not None and abs(a - b) <= 0.25 * b
    return same_label(a, b)


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
    head = "".join(f"<th>{escape(baseline_label(n))}</th>" for n in baselines)
    body = []
    for key, label, kind, higher in metric_specs(metrics):
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


def _field_section(rows: Sequence[PredictionRow], f: AnswerField) -> str:
    """An extra label field's confusion matrix (its metrics are in the headline table)."""
    words = f.name.replace("_", " ").capitalize()
    return (f'<h2>{escape(words)} confusion matrix</h2><section style="overflow-x:auto">'
            f"{_confusion(rows, f.name)}</section>")


def _confusion(rows: Sequence[PredictionRow], field: str, top: int = 12) -> str:
    """Confusion matrix as an HTML table, cells shaded by their share of the true class."""
    names, cols, matrix = confusion_matrix(
        [r.truth for r in rows], [r.prediction for r in rows], field=field
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


def _calibration_section(metrics: Mapping[str, Any],
                         uncertainty: Mapping[str, Any] | None) -> str:
    """Coverage against the stated level, interval width, reliability diagrams."""
    if not uncertainty or not uncertainty.get("coverage"):
        return ("<h2>Calibration</h2><section><div class=\"note\">This model has no "
                "calibration: no intervals or confidence.</div></section>")
    from productvlm.evaluation.uncertainty import calibration_figure

    level = metrics.get("price_interval_level", 0.8)
    text = (f"The {level:.0%} price interval held the true price for "
            f"{metrics['price_interval_coverage']:.1%} of the photos; its median width is "
            f"{metrics['price_interval_width']:.0%} of the price. Category probability ECE "
            f"{metrics['category_ece']:.3f}, confidence ECE {metrics['confidence_ece']:.3f} "
            "(confidence: the chance that the category is right and the price within 25%).")
    return (f"<h2>Calibration</h2><section><p>{escape(text)}</p>"
            f'<img src="{data_uri(png(calibration_figure(dict(uncertainty))))}" '
            'alt="interval coverage and reliability diagrams" style="max-width:100%">'
            "</section>")


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
    uncertainty: Mapping[str, Any] | None = None,
    schema: AnswerSchema = DEFAULT_SCHEMA,
) -> Path:
    """Write ``metrics.json`` and a self-contained ``report.html`` into ``out_dir``.

    Each extra label field of ``schema`` (colour, ...) gets a confusion matrix of its own;
    the gallery shows every field.

    ``meta`` (model, split, date, ...) is shown in the page header and saved in
    metrics.json; ``uncertainty`` (the curves of evaluation.uncertainty) adds the calibration
    section and is saved there too. Returns the path of report.html.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    breakdown = per_category(
        [r.truth for r in rows],
        [r.prediction for r in rows],
        field=field,
        fallback_price=fallback_price,
    )
    (out / "metrics.json").write_text(
        json.dumps(
            jsonable(
                {
                    "metrics": dict(metrics),
                    "baselines": {k: dict(v) for k, v in baseline_metrics.items()},
                    "per_category": breakdown,
                    "fallback_price": fallback_price,
                    "meta": dict(meta or {}),
                    "calibration": dict(uncertainty or {}),
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
    scatter, hist = data_uri(png(price_scatter(rows))), data_uri(png(error_histogram(rows)))
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
{_calibration_section(metrics, uncertainty)}
<h2>Category confusion matrix</h2><section style="overflow-x:auto">{_confusion(rows, field)}
</section>
<h2>Per category</h2><section>{_per_category_table(breakdown)}</section>
{"".join(_field_section(rows, f) for f in schema.extras if f.kind == "label")}
<h2>Best cases</h2><section class="gallery">{"".join(_card(r) for r in best)}</section>
<h2>Worst cases</h2><section class="gallery">{"".join(_card(r) for r in worst)}</section>
</main></body></html>
"""
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
