"""`productvlm evaluate --ray`: a prepared split answered on a Ray Data pool of model actors.

The driver cuts the split into batches by position and hands each to Ray Data as one item
(:func:`~productvlm.inference.raydata.run_on_ray`); every actor loads the model once and
opens the prepared dataset itself (memory-mapped), so photos never pass through the driver.
An actor returns, per row, the row's columns, its answer record, the signals the metrics
read (the price distribution for the coverage curve, the listed prices' for ``--faults``)
and a small JPEG thumbnail for the report, as JSON lines in the split's order. The metrics,
predictions.jsonl and the report are then made exactly as in one process.

>>> for meta, pred, thumb in answered_on_ray(cfg, calibration=None):  # doctest: +SKIP
...     print(meta["title"], pred.title)
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from productvlm.calibration import Signals
from productvlm.evaluation.rows import split_rows, thumb
from productvlm.inference import Prediction


def answered_on_ray(cfg: Any, calibration: Path | None,
                    ) -> Iterator[tuple[dict[str, Any], Prediction, bytes | None]]:
    """(row columns, answer, JPEG thumbnail or None) for each row of ``cfg.split`` (an
    EvalConfig), in order; ``calibration``: the folder the actors load (None: the run's
    own, or none when ``cfg.calibrate`` is off)."""
    from productvlm.inference.raydata import run_on_ray
    from productvlm.inference.sizing import plan_rows
    from productvlm.prepared import load_prepared

    rows = len(load_prepared(cfg.data)[cfg.split])
    rows = min(rows, cfg.limit) if cfg.limit else rows
    size = plan_rows(cfg.batch_size)  # auto: each actor answers in batches of its own
    payloads = [json.dumps([s, min(s + size, rows)]) for s in range(0, rows, size)]
    spec = {**cfg.model_dump(mode="json"),
            "calibration": str(calibration) if calibration else None}
    for text in run_on_ray(payloads, EvalActor, {"spec": json.dumps(spec)},
                           address=cfg.ray, actors=cfg.ray_actors):
        for line in text.splitlines():
            r = json.loads(line)
            pred = Prediction.from_dict(r["answer"])
            pred.signals = signals_from_json(r["signals"])
            yield r["meta"], pred, base64.b64decode(r["thumb"]) if r["thumb"] else None


class EvalActor:
    """One model actor of ``evaluate --ray``: loads the model and opens the split once, then
    answers each batch ``[start, stop)`` of rows it is handed."""

    def __init__(self, spec: str) -> None:
        from productvlm.inference.vllm_engine import load_engine
        from productvlm.prepared import load_prepared

        self.spec = json.loads(spec)
        s = self.spec
        self.predictor = load_engine(
            s.get("engine", "hf"), s["model"], device=s["device"], precision=s["precision"],
            hub_kernels=s["hub_kernels"], batch_size=s["batch_size"],
            max_new_tokens=s["max_new_tokens"], constrained=s["constrained"],
            interval_level=s["interval_level"], calibration=s["calibration"])
        if not s["calibrate"]:
            self.predictor.calibration = None
        self.split = load_prepared(Path(s["data"]))[s["split"]]

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from productvlm.inference.batch import answer_rows

        out = []
        for payload in batch["text"]:
            start, stop = json.loads(str(payload))
            rows = split_rows(self.split.select(range(start, stop)),
                              self.spec["faults"] is not None, offset=start)
            out.append("\n".join(
                json.dumps({"meta": row.data, "answer": pred.to_dict(),
                            "signals": signals_to_json(pred.signals),
                            "thumb": _jpeg(row.image) if row.readable else None},
                           ensure_ascii=False)
                for row, pred in answer_rows(rows, self.predictor)))
        return {"out": out}


def _jpeg(image: Any) -> str:
    """The row's thumbnail (:func:`~productvlm.evaluation.rows.thumb`) as base64 JPEG."""
    buf = io.BytesIO()
    thumb(image).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


_ARRAYS = ("price_logprobs", "given_logprobs")


def signals_to_json(sig: Signals | None) -> dict[str, Any] | None:
    """What evaluate reads of a row's signals, exactly (arrays keep their dtype).

    >>> s = Signals(price_logprobs=np.array([-1.5, -0.25], dtype=np.float32))
    >>> back = signals_from_json(signals_to_json(s))
    >>> back.price_logprobs.dtype, back.price_logprobs.tolist()
    (dtype('float32'), [-1.5, -0.25])
    """
    if sig is None:
        return None
    out: dict[str, Any] = {"answer_logprob": sig.answer_logprob}
    for name in _ARRAYS:
        value = getattr(sig, name)
        out[name] = None if value is None else [str(value.dtype), value.tolist()]
    return out


def signals_from_json(data: dict[str, Any] | None) -> Signals | None:
    """The :class:`Signals` back from :func:`signals_to_json`."""
    if data is None:
        return None
    arrays = {name: None if data[name] is None else np.asarray(data[name][1],
                                                               dtype=data[name][0])
              for name in _ARRAYS}
    return Signals(answer_logprob=data["answer_logprob"], **arrays)


__all__ = ["EvalActor", "answered_on_ray", "signals_from_json", "signals_to_json"]
