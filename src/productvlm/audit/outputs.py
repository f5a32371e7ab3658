"""What an audit leaves behind: the processes' parts merged into audit.csv (ranked by
surprise), failures.csv, audit.json and audit.html.

>>> merge_and_write(cfg, rows_in, failures, calibration)  # doctest: +SKIP
PosixPath('runs/audit/audit.csv')
"""

from __future__ import annotations

import csv
import json
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from productvlm.answer import format_price
from productvlm.evaluation.listings import known_errors, mispricing_figures, rule_scores
from productvlm.evaluation.plots import data_uri, png
from productvlm.inference.batch import Parts
from productvlm.prepared import FAILURE_COLUMNS

PARTS = "parts"
COLUMNS = ("rank", "row", "product_code", "title", "category", "listed_price",
           "predicted_price", "interval_low", "interval_high", "interval_level", "surprise",
           "p_value", "flagged", "why", "words_price", "words_low", "words_high",
           "photo_surprise", "p_photo", "p_words", "in_training", "model_title", "model_category",
           "model_price", "category_prob", "confidence")
MAX_CARDS = 200  # flagged products shown with their photos in audit.html


def parts_of(out: Path) -> Parts:
    """The audit's part files (OUT/parts/rank{r}.jsonl), keyed by catalog row."""
    return Parts(out / PARTS, key_field="row")


def _yes(value: Any) -> str:
    return "" if value is None else ("yes" if value else "no")


def field_columns(ok: list[dict[str, Any]]) -> list[str]:
    """audit.csv's columns for the model's extra answer fields: what the listing says
    (``listed_colour``, when the catalog has it), what the photo shows (``model_colour``),
    then ``fields_differ`` (the fields where they disagree); none for the default answer."""
    names = list(dict.fromkeys(k.removeprefix("model_") for r in ok for k in r
                               if k.startswith("model_") and k not in COLUMNS))
    listed = {k.removeprefix("listed_") for r in ok for k in r if k.startswith("listed_")}
    cols = [c for n in names for c in ((f"listed_{n}",) if n in listed else ()) + (f"model_{n}",)]
    return [*cols, "fields_differ"] if names else []


def _csv_row(rank: int, r: dict[str, Any]) -> list[Any]:
    num = lambda v, d=2: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    return [rank, r["row"], r["product_code"], r["title"], r["category"], num(r["listed"]),
            num(r["predicted"]), num(r["low"]), num(r["high"]), num(r["level"]),
            num(r["surprise"], 4), num(r["p_value"], 4), _yes(r["flagged"]), r["why"],
            num(r.get("words_price")), num(r.get("words_low")), num(r.get("words_high")),
            num(r.get("photo_surprise"), 4), num(r.get("p_photo"), 4), num(r.get("p_words"), 4),
            _yes(r.get("in_training")),
            r["model_title"] or "", r["model_category"] or "",
            num(r["model_price"]), num(r["category_prob"], 4), num(r["confidence"], 4)]


def merge_and_write(cfg: Any, rows_in: int, failures: list[tuple[int, str, str]],
                    calibration: Any) -> Path:
    """Merge the parts and write audit.csv, failures.csv, audit.json and audit.html."""
    from productvlm.errors import ProductVLMError

    rows = parts_of(cfg.out).read()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = sorted(failures + [(r["row"], r["product_code"], r["reason"])
                                for r in rows if r["status"] != "ok"])
    if len(ok) + len(failed) != rows_in:
        raise ProductVLMError(f"{cfg.out / PARTS}: holds {len(ok) + len(failed)} rows for a "
                              f"catalog of {rows_in}: audit into an empty --out")
    ok.sort(key=lambda r: (-(r["surprise"] if r["surprise"] is not None else -1.0), r["row"]))
    path = cfg.out / "audit.csv"
    fields = field_columns(ok)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*COLUMNS, *fields])
        w.writerows([*_csv_row(i + 1, r), *("" if r.get(c) is None else r[c] for c in fields)]
                     for i, r in enumerate(ok))
    with (cfg.out / "failures.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FAILURE_COLUMNS)
        w.writerows(failed)
    summary: dict[str, Any] = {
        "model": cfg.model, "source": cfg.source, "rows_in": rows_in, "audited": len(ok),
        "failed": len(failed), "flagged": sum(bool(r["flagged"]) for r in ok),
        "in_training": sum(bool(r.get("in_training")) for r in ok),
        "interval_level": cfg.interval_level, "flag_level": cfg.flag_level,
        "calibration": calibration.stats,
    }
    if fields:  # listings whose answer fields (colour, ...) disagree with their photo
        summary["fields_differ"] = sum(bool(r.get("fields_differ")) for r in ok)
    if cfg.faults is not None and ok:
        errors = known_errors(cfg.faults)
        kinds = [errors.get(r["row"], "clean") for r in ok]
        rule = rule_scores([r["listed"] for r in ok], [r["category"] for r in ok])
        summary["known_errors"] = mispricing_figures(
            kinds, [r["surprise"] or 0.0 for r in ok], [bool(r["flagged"]) for r in ok], rule)
    (cfg.out / "audit.json").write_text(json.dumps(summary, indent=1))
    write_html(cfg.out / "audit.html", ok, summary)
    return path


def _histogram(ok: list[dict[str, Any]]) -> str:
    from matplotlib.figure import Figure

    s = np.array([r["surprise"] or 0.0 for r in ok])
    flagged = np.array([bool(r["flagged"]) for r in ok])
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    bins = np.linspace(0, max(float(s.max()) if len(s) else 1.0, 0.5), 40)
    ax.hist([s[~flagged], s[flagged]], bins=bins, stacked=True, label=["not flagged", "flagged"],
            color=["#8ab17d", "#e76f51"])
    ax.set_yscale("log")
    ax.set_xlabel("surprise: log price outside the model's middle half")
    ax.set_ylabel("products")
    ax.legend(frameon=False, fontsize=8)
    return data_uri(png(fig))


def write_html(path: Path, ok: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The flagged products with their photos, listed vs predicted, and the score histogram."""
    flagged = [r for r in ok if r["flagged"]][:MAX_CARDS]
    cards = []
    for r in flagged:
        img = (f'<img src="data:image/jpeg;base64,{r["thumb"]}" alt="">' if r.get("thumb")
               else "")
        seen = " · in training" if r.get("in_training") else ""
        differ = "".join(f'<br>{escape(n)}: listed {escape(str(r.get(f"listed_{n}")))}, the '
                         f'photo {escape(str(r.get(f"model_{n}")))}'
                         for n in (r.get("fields_differ") or "").split())
        words = (f'<br>the words: {format_price(r["words_low"])}–'
                 f'{format_price(r["words_high"])}' if r.get("words_low") is not None else "")
        cards.append(
            f'<figure>{img}<figcaption><b>{escape(r["title"])}</b><br>'
            f'{escape(r["category"])} · row {r["row"]}{seen}<br>'
            f'listed <b class="bad">{format_price(r["listed"])}</b> · expected '
            f'{format_price(r["predicted"])}<br>the photo: {format_price(r["low"])}–'
            f'{format_price(r["high"])}{words}{differ}<br><small>{escape(r["why"])}</small>'
            "</figcaption></figure>")
    known = summary.get("known_errors", {})
    table = "".join(
        f"<tr><td>{escape(k)}</td><td>{v['rows']}</td><td>{_f(v['auc'])}</td>"
        f"<td>{_f(v['rule_auc'])}</td><td>{_f(v['precision_at_95_recall'])}</td>"
        f"<td>{_f(v['rule_precision_at_95_recall'])}</td><td>{_f(v['flag_recall'])}</td>"
        f"<td>{_f(v['flag_precision'])}</td></tr>"
        for k, v in known.items() if isinstance(v, dict))
    known_html = (
        "<h2>Against the known errors</h2><table><tr><th>kind</th><th>rows</th>"
        "<th>ROC AUC</th><th>rule AUC</th><th>precision at 95% recall</th><th>rule</th>"
        f"<th>flag recall</th><th>flag precision</th></tr>{table}</table>"
        "<p>The rule: distance of the listed price from its listed category's median.</p>"
        if table else "")
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>productvlm audit</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#223}}
figure{{display:inline-block;width:230px;margin:6px;vertical-align:top;border:1px solid #dde;
border-radius:6px;padding:6px}}figure img{{width:100%;border-radius:4px}}
.bad{{color:#c0392b}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccd;
padding:3px 8px;text-align:right}}</style></head><body>
<h1>Audit of {escape(str(summary['source']))}</h1>
<p>{summary['audited']} of {summary['rows_in']} products audited ({summary['failed']} in
failures.csv); <b>{summary['flagged']} flagged</b>: listed outside the
{summary['flag_level']:.0%} range of what the photo and the listing's words together expect
(each card shows the photo's and the words' own {summary['interval_level']:.0%} intervals).
{summary['in_training']} were in the model's training split (their price was learned, right
or wrong). Model: {escape(str(summary['model']))}.</p>
<img src="{_histogram(ok)}" alt="surprise histogram">{known_html}
<h2>Flagged products (most surprising first{', first ' + str(MAX_CARDS) if len(flagged) ==
MAX_CARDS else ''})</h2>{''.join(cards) or '<p>none</p>'}
</body></html>"""
    path.write_text(html, encoding="utf-8")


def _f(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"
