"""The audit's inner loop: fetch the photos of a process's batches, answer them through the
batch engine, judge each listed price, and append each batch's rows to the process's part
file (so that a rerun resumes).

>>> audit_batches(records, batches, predictor, fetch, cfg, trained, write, True)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from productvlm.catalog.fetch import fetch_images
from productvlm.evaluation.listings import judge
from productvlm.evaluation.metrics import same_label
from productvlm.images import ImageRejected, decode_image
from productvlm.inference import Prediction
from productvlm.inference.batch import Row, answer_batches, chunks
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


def audit_batches(records: Sequence[Any], batches: Sequence[Sequence[int]], predictor: Any,
                  fetch_cfg: Any, cfg: Any, trained: TrainingItems | None,
                  write: Callable[[list[dict]], None], progress: bool) -> None:
    """Audit ``batches`` (positions in ``records``, catalog Records) in order; each batch's
    rows go to ``write`` once judged."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    fetched = fetch_images((records[i].image for b in batches for i in b), fetch_cfg,
                           progress=False)

    def rows() -> Iterator[list[Row]]:
        for b in batches:
            yield [_row(records[i], next(fetched), trained) for i in b]

    cal = predictor.calibration
    with Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(),
                  disable=not progress) as bar:
        task = bar.add_task("audit", total=sum(len(b) for b in batches))
        for answered in answer_batches(rows(), predictor, answer_prices=False,
                                       progress=lambda n: bar.advance(task, n)):
            out = []
            for row, pred in answered:
                out.append(row.data if not row.readable else
                           _judged(row, pred, cal, cfg, trained))
            write(out)


def load_audit_model(cfg: Any) -> tuple[Any, TrainingItems | None]:
    """The predictor an audit answers with, and the run's training items (to mark listings
    the model was trained on)."""
    from productvlm.inference.vllm_engine import load_engine
    from productvlm.rundir import resolve_model

    predictor = load_engine(cfg.engine, cfg.model, device=cfg.device, precision=cfg.precision,
                            hub_kernels=cfg.hub_kernels, batch_size=cfg.batch_size,
                            max_new_tokens=cfg.max_new_tokens,
                            interval_level=cfg.interval_level, calibration=cfg.calibration)
    info = resolve_model(cfg.model)
    return predictor, info.run.read_training_items() if info.run else None


class AuditActor:
    """One model actor of a Ray Data audit: loads the model once, then audits each planned
    batch it is handed (JSON of catalog Records) into a part file of its own.

    >>> AuditActor(cfg=cfg.model_dump_json(), fetch=fetch_cfg.model_dump_json())  # doctest: +SKIP
    """

    def __init__(self, cfg: str, fetch: str) -> None:
        from productvlm.audit.config import AuditConfig
        from productvlm.audit.outputs import parts_of
        from productvlm.catalog.fetch_config import FetchConfig
        from productvlm.inference.raydata import part_name

        self.cfg = AuditConfig.model_validate_json(cfg)
        self.fetch = FetchConfig.model_validate_json(fetch)
        self.predictor, self.trained = load_audit_model(self.cfg)
        self.parts, self.name = parts_of(self.cfg.out), part_name()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from productvlm.catalog.schema import Record

        for payload in batch["text"]:
            records = [Record(**r) for r in json.loads(str(payload))]
            # in batches of this actor's own size (auto: what fits its GPU)
            cut = list(chunks(range(len(records)), self.predictor.batch_size))
            with self.parts.writer(self.name) as write:
                audit_batches(records, cut, self.predictor, self.fetch, self.cfg,
                              self.trained, write, progress=False)
        return {"out": [""] * len(batch["text"])}  # the rows are in the part file


def _row(record: Any, fetched: Any, trained: TrainingItems | None) -> Row:
    """The engine's row for a catalog record: its photo and listing, or why it has none
    (``data``: the audit row written for it)."""
    row: dict[str, Any] = {"row": record.row, "product_code": record.product_code,
                           "title": record.title, "category": record.category,
                           "listed": record.price, "currency": record.currency,
                           **{f"listed_{k}": v for k, v in record.extra.items()}}
    if not fetched.ok:
        reason = f"image: {fetched.error}"
        return Row(record.row, reason, data={**row, "status": "failed", "reason": reason})
    try:
        image = decode_image(io.BytesIO(fetched.data))
    except ImageRejected as e:
        reason = f"image: {e.reason}"
        return Row(record.row, reason, data={**row, "status": "failed", "reason": reason})
    seen = None
    if trained is not None:
        seen = bool(record.product_code) and record.product_code in trained.product_codes
        seen = seen or fetched.sha256 in trained.image_sha256
    return Row(record.row, image, given=(record.title, record.category),
               data={**row, "status": "ok", "in_training": seen})


def _judged(row: Row, pred: Prediction, cal: Any, cfg: Any,
            trained: TrainingItems | None) -> dict[str, Any]:
    """The audit row of an answered listing: its listed price judged against the model's."""
    sig, r = pred.signals, dict(row.data)
    gate = (float(cal.typicality(sig.features[None, :], sig.photo)[0])
            if sig.features is not None else None)
    unknown = ([w for w in title_words(r["title"]) if w not in trained.title_words]
               if trained is not None and trained.title_words else [])
    v = judge(sig, r["listed"], cal, title=r["title"], category=r["category"],
              level=cfg.interval_level, flag_level=cfg.flag_level, typicality=gate,
              unknown_words=unknown)
    r.update(predicted=v.predicted, low=v.low, high=v.high, level=cfg.interval_level,
             surprise=v.surprise, p_value=v.p_value, flagged=v.flagged, why=v.why,
             words_price=v.words_price, words_low=v.words_low, words_high=v.words_high,
             photo_surprise=v.photo_surprise, p_photo=v.p_photo, p_words=v.p_words,
             model_title=pred.title, model_category=pred.category,
             model_price=pred.price, category_prob=pred.category_prob,
             confidence=pred.confidence, **{f"model_{k}": v for k, v in pred.extra.items()})
    # an answer field the listing says otherwise than the photo (label fields, by name)
    r["fields_differ"] = " ".join(
        k for k, v in pred.extra.items() if r.get(f"listed_{k}") is not None and v is not None
        and not same_label(v, r[f"listed_{k}"]))
    if v.flagged:
        r["thumb"] = thumbnail(row.image)
    return r
