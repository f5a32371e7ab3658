"""The one prediction path: photos -> answers -> parsed fields, with how far to trust them.
evaluate, predict, serve and audit all call :class:`Predictor` (through
:mod:`productvlm.inference.batch` when they answer many rows).

Generation is batched greedy decoding with left padding and the KV cache, stopping at the
answer's end token (``<|end|>`` for Phi-3, see ``prompts.answer_end``) or EOS; answers are
constrained to the target format by default (:mod:`productvlm.constrained`), so every answer
parses. With a calibration (a run's ``calibration/``), each answer also gets a price
interval, its category's probability and a confidence (:mod:`productvlm.calibration`,
measured by :mod:`productvlm.measure`); the answer text is the same with or without it.
Every model family takes this one path (:mod:`productvlm.models.families`).

Usage:
    productvlm predict --model runs/demo/train shots/*.jpg https://example.com/bag.jpg

>>> predictor = Predictor.load("runs/demo/train")  # doctest: +SKIP
>>> predictor.predict([Image.open("lola-bag.jpg")])[0].title  # doctest: +SKIP
'Medium Lola Bag'

The class is put together from three parts: :mod:`.loader` (loading a run, describing the
predictor), :mod:`.generation` (the decode path: encoding, constrained generation, the
answers' texts) and :mod:`.measuring` (measuring another engine's answers, the calibrated
reading, image features); :meth:`Predictor.predict` ties them together.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from productvlm.answer import DEFAULT_SCHEMA, AnswerSchema, FieldDomain, TargetFormat
from productvlm.calibration import Calibration
from productvlm.errors import ProductVLMError
from productvlm.inference.generation import (
    TITLE_MAX_CHARS,
    TITLE_SLACK,
    GenerateMixin,
    answer_format,
)
from productvlm.inference.loader import LoadMixin
from productvlm.inference.measuring import MeasureMixin
from productvlm.inference.record import (
    BATCH_SIZE,
    INTERVAL_LEVEL,
    LOW_CONFIDENCE,
    MAX_NEW_TOKENS,
    Prediction,
)
from productvlm.photostats import photo_stats
from productvlm.prompts import QUESTION

__all__ = ["TITLE_MAX_CHARS", "TITLE_SLACK", "AnswerBar", "Predictor", "Progress",
           "answer_format"]

Progress = bool | Callable[[int, int], None] | None


class Predictor(LoadMixin, GenerateMixin, MeasureMixin):
    """Batched, optionally constrained, greedy answers for product photos.

    Build it with :meth:`load` from a run directory / model folder / Hub id, or directly from
    an in-memory model and processor (as the training callback does).

    >>> p = Predictor(model, processor, categories=["BAGS", "COATS"])  # doctest: +SKIP
    >>> [x.category for x in p.predict(photos)]  # doctest: +SKIP
    ['BAGS', 'COATS']
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        target_format: TargetFormat = "seed",
        question: str = QUESTION,
        categories: Sequence[str] | None = None,
        currency: str | None = None,
        batch_size: int | str = BATCH_SIZE,
        max_new_tokens: int = MAX_NEW_TOKENS,
        constrained: bool = True,
        model_path: str | None = None,
        adapter: str | None = None,
        calibration: Calibration | None = None,
        interval_level: float = INTERVAL_LEVEL,
        low_confidence: float = LOW_CONFIDENCE,
        title_alphabet: str | None = None,
        title_max_chars: int | None = None,
        schema: AnswerSchema = DEFAULT_SCHEMA,
        domains: Mapping[str, FieldDomain] | None = None,
    ) -> None:
        if batch_size == "auto":  # as many photos as fit the device (inference/sizing.py)
            from productvlm.inference.sizing import answer_batch_size

            batch_size, why = answer_batch_size(model, processor, question=question,
                                                max_new_tokens=max_new_tokens)
            print(why, file=sys.stderr)
        if not isinstance(batch_size, int) or batch_size < 1 or max_new_tokens < 1:
            raise ProductVLMError("batch_size (a number or auto) and max_new_tokens must be "
                                  "at least 1")
        if calibration is not None:
            calibration.margin(interval_level)  # a level it cannot give fails here, once
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.target_format, self.question = target_format, question
        self.categories = sorted(set(categories)) if categories else None
        self.currency = currency
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.constrained = constrained
        # the KV cache generate keeps: "dynamic" (grows a step at a time) or "static"
        # (allocated once at its full length; on CUDA transformers then compiles the decode
        # step). Same answers (tested); bench/gpu_check.py measures whether static pays.
        self.cache = "dynamic"
        self.model_path, self.adapter = model_path, adapter
        self.calibration = calibration
        self.interval_level, self.low_confidence = interval_level, low_confidence
        # the training titles' characters and longest length (labels.json), which bound the
        # title of a constrained answer; None: any characters, TITLE_MAX_CHARS
        self.title_alphabet, self.title_max_chars = title_alphabet, title_max_chars
        # the answer's fields, and what training saw of each extra one (labels.json)
        self.schema, self.domains = schema, dict(domains or {})
        self._grammar: Any = None
        self._candidates: Any = None  # measure.PriceCandidates for the current grid
        self._cut_rows: set[int] = set()  # rows of the last batch that hit max_new_tokens
        self.last_ids: list[list[int]] = []  # the last batch's answer ids, stop token included
        self._encoder: Any = None  # the processor copy encode() runs (see there)
        self.tokens_generated = 0  # answer tokens so far, stop tokens included (for benches)
        self.constraint_seconds = 0.0  # time spent masking logits (for benches)

    def predict(self, images: Sequence[Any], progress: Progress = None,
                given: Sequence[tuple[str, str]] | None = None,
                grid: Sequence[float] | None = None,
                answer_prices: bool = True, encoded: Any = None) -> list[Prediction]:
        """Answer each image (PIL, RGB) in chunks of ``batch_size``; never raises on an answer
        that does not parse (its ``error`` says why).

        ``progress``: True for a progress bar with answers/s, or ``fn(done, total)``.
        ``given``: per image a catalog (title, category) whose prices are scored too
        (``signals.given_logprobs``, for judging a listed price), with a calibration.
        ``grid``: candidate prices to measure (``signals``) without a calibration (to fit
        one); ``answer_prices=False`` skips scoring the answer's own price. ``encoded``:
        :meth:`encode`'s output for ``images`` (at most one batch), made ahead of time.
        """
        images = list(images)
        if encoded is not None and len(images) > self.batch_size:
            raise ValueError("encoded inputs are for one batch of images at most")
        prices = grid if grid is not None else self.calibration.grid if self.calibration else None
        out: list[Prediction] = []
        bar = AnswerBar(len(images)) if progress is True else None
        try:
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                t0 = time.perf_counter()
                sub = given[start:start + self.batch_size] if given is not None else None
                answers, signals = self.generate(chunk, grid=prices, given=sub,
                                                 answer_prices=answer_prices, encoded=encoded)
                ms = (time.perf_counter() - t0) * 1000
                for b, (raw, sig) in enumerate(zip(answers, signals, strict=True)):
                    pred = Prediction.from_answer(raw, self.target_format, schema=self.schema,
                                                  currency=self.currency,
                                                  latency_ms=round(ms, 1))
                    if self._cut_rows and b in self._cut_rows:
                        pred.error = (f"the answer was cut at max_new_tokens="
                                      f"{self.max_new_tokens} before its end")
                    if sig is not None:
                        sig.photo = photo_stats(chunk[b])
                    pred.signals = sig
                    out.append(self.calibrated(pred, sig))
                if bar is not None:
                    bar.advance(len(chunk))
                elif callable(progress):
                    progress(len(out), len(images))
        finally:
            if bar is not None:
                bar.close()
        return out


class AnswerBar:
    """A rich progress bar on stderr with answers/s."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("answering"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("answers", total=total, rate="")
        self.progress.start()

    def advance(self, n: int) -> None:
        done = self.progress.tasks[0].completed + n
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=n, rate=f"{rate:.2f} answers/s")

    def close(self) -> None:
        self.progress.stop()

