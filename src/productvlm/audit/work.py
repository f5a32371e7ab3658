"""The audit's inner loop: fetch a process's batches' photos, answer them, judge each listed
price, append the batch's rows to the process's part file (so that a rerun resumes).

>>> audit_batches(batches, predictor, fetch_cfg, cfg, trained, part, True)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from productvlm.catalog.fetch import fetch_images
from productvlm.evaluation.listings import judge
from productvlm.images import ImageRejected, decode_image
from productvlm.inference import Prediction
from productvlm.prompts import title_words
from productvlm.rundir import TrainingItems

THUMB_SIDE = 192


def thumbnail(image: Any) -> str:
    """A small JPEG of the photo as base64, for audit.html."""
    small = image.copy()
    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def audit_batches(batches: Sequence[Sequence[Any]], predictor: Any, fetch_cfg: Any, cfg: Any,
                  trained: TrainingItems | None, part: Path, progress: bool) -> None:
    """Audit ``batches`` (lists of catalog Records) in order, appending to ``part``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    part.parent.mkdir(parents=True, exist_ok=True)
    sources = (r.image for batch in batches for r in batch)
    fetched = fetch_images(sources, fetch_cfg, progress=False)
    total = sum(len(b) for b in batches)
    with Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(),
                  disable=not progress) as bar, part.open("a", encoding="utf-8") as f:
        task = bar.add_task("audit", total=total)
        for batch in batches:
            rows = [_row(record, next(fetched), trained) for record in batch]
            ready = [r for r in rows if "image" in r]
            if ready:
                _judge(ready, predictor, cfg, trained)
            for r in rows:
                r.pop("image", None)
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a batch is on disk before the next one starts
            bar.advance(task, len(batch))


def _row(record: Any, fetched: Any, trained: TrainingItems | None) -> dict:
    row: dict[str, Any] = {"row": record.row, "product_code": record.product_code,
                           "title": record.title, "category": record.category,
                           "listed": record.price, "currency": record.currency}
    if not fetched.ok:
        return {**row, "status": "failed", "reason": f"image: {fetched.error}"}
    try:
        image = decode_image(io.BytesIO(fetched.data))
    except ImageRejected as e:
        return {**row, "status": "failed", "reason": f"image: {e.reason}"}
    if trained is None:
        return {**row, "status": "ok", "image": image, "in_training": None}
    seen = bool(record.product_code) and record.product_code in trained.product_codes
    seen = seen or fetched.sha256 in trained.image_sha256
    return {**row, "status": "ok", "image": image, "in_training": seen}


def _judge(rows: list[dict], predictor: Any, cfg: Any, trained: TrainingItems | None) -> None:
    """Answer the rows' photos and judge their listed prices, in place."""
    cal = predictor.calibration
    given = [(r["title"], r["category"]) for r in rows]
    texts, signals = predictor.generate([r["image"] for r in rows], grid=cal.grid, given=given,
                                        answer_prices=False)
    for r, text, sig in zip(rows, texts, signals, strict=True):
        pred = predictor.calibrated(Prediction.from_answer(text, predictor.target_format), sig)
        gate = float(cal.typicality(sig.features[None, :])[0]) if sig.features is not None \
            else None
        unknown = ([w for w in title_words(r["title"]) if w not in trained.title_words]
                   if trained is not None and trained.title_words else [])
        v = judge(sig, r["listed"], cal, level=cfg.interval_level, flag_level=cfg.flag_level,
                  typicality=gate, unknown_words=unknown)
        r.update(predicted=v.predicted, low=v.low, high=v.high, level=cfg.interval_level,
                 surprise=v.surprise, p_value=v.p_value, flagged=v.flagged, why=v.why,
                 model_title=pred.title, model_category=pred.category,
                 model_price=pred.price, category_prob=pred.category_prob,
                 confidence=pred.confidence)
        if v.flagged:
            r["thumb"] = thumbnail(r["image"])
