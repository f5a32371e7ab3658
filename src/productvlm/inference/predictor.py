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
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from productvlm.answer import TargetFormat
from productvlm.calibration import Calibration, Signals, Uncertainty
from productvlm.errors import ProductVLMError
from productvlm.inference.record import (
    BATCH_SIZE,
    INTERVAL_LEVEL,
    LOW_CONFIDENCE,
    MAX_NEW_TOKENS,
    UNLIKE_TRAINING,
    Prediction,
)
from productvlm.photostats import photo_stats
from productvlm.prompts import QUESTION, answer_end, render_prompt, stop_token_ids
from productvlm.rundir import resolve_model

Progress = bool | Callable[[int, int], None] | None
#: a constrained title's length cap: the longest training title's, with this much slack for a
#: new product's longer name; TITLE_MAX_CHARS where the run does not say
TITLE_SLACK, TITLE_MAX_CHARS = 1.2, 120


class Predictor:
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
        self._grammar: Any = None
        self._candidates: Any = None  # measure.PriceCandidates for the current grid
        self._cut_rows: set[int] = set()  # rows of the last batch that hit max_new_tokens
        self.last_ids: list[list[int]] = []  # the last batch's answer ids, stop token included
        self._encoder: Any = None  # the processor copy encode() runs (see there)
        self.tokens_generated = 0  # answer tokens so far, stop tokens included (for benches)
        self.constraint_seconds = 0.0  # time spent masking logits (for benches)

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: str = "auto",
        precision: str = "auto",
        hub_kernels: bool = False,
        batch_size: int | str = BATCH_SIZE,
        max_new_tokens: int = MAX_NEW_TOKENS,
        constrained: bool = True,
        num_crops: int | None = None,
        categories: Sequence[str] | None = None,
        calibration: str | Path | None = None,
        interval_level: float = INTERVAL_LEVEL,
        low_confidence: float = LOW_CONFIDENCE,
    ) -> Predictor:
        """Load weights (+ adapter), processor, prompt, target format, training categories
        and calibration.

        ``categories`` overrides labels.json; without either, constrained decoding leaves the
        category as free text. ``calibration``: a calibration folder other than the run's
        own ``calibration/``; a model with neither says so on stderr and still answers.

        >>> Predictor.load("runs/demo/train", batch_size=16).target_format  # doctest: +SKIP
        'seed'
        """
        info = resolve_model(model)  # first: a wrong path fails before torch is imported
        from productvlm.models.loading import pick_device, pick_dtype
        from productvlm.models.processors import load_processor

        dev = pick_device(device)
        try:
            processor = load_processor(info.processor, num_crops=num_crops or info.num_crops)
            net = _load_weights(info.weights, info.adapter, pick_dtype(precision, dev),
                                hub_kernels)
        except (OSError, ValueError) as e:
            if isinstance(e, ProductVLMError):
                raise
            raise ProductVLMError(f"{model}: cannot load the model ({e})") from None
        net.to(dev).eval()
        folder = Path(calibration) if calibration else (info.run.calibration if info.run
                                                        else None)
        cal = None
        if folder is not None and folder.is_dir():
            cal = Calibration.load(folder)
        elif calibration:
            raise ProductVLMError(f"{calibration}: no calibration folder there")
        else:
            print(f"{model}: no calibration (calibration/ in the run directory), so answers "
                  "carry no price interval or confidence; `productvlm evaluate` calibrates a "
                  "model on a validation split", file=sys.stderr)
        return cls(net, processor, target_format=info.target_format, question=info.question,
                   categories=categories or info.categories, currency=info.currency,
                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                   constrained=constrained, model_path=str(model),
                   adapter=str(info.adapter) if info.adapter else None, calibration=cal,
                   interval_level=interval_level, low_confidence=low_confidence,
                   title_alphabet=info.title_alphabet, title_max_chars=info.title_max_chars)

    def describe(self) -> dict[str, Any]:
        """How this predictor answers (shown by the server's /v1/model)."""
        return {"engine": "hf", "model_path": self.model_path, "adapter": self.adapter,
                "target_format": self.target_format, "question": self.question,
                "categories": self.categories, "currency": self.currency,
                "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "constrained": self.constrained, "calibrated": self.calibration is not None,
                "interval_level": self.interval_level if self.calibration else None,
                "low_confidence_below": self.low_confidence if self.calibration else None,
                **self.placement()}

    def placement(self) -> dict[str, str]:
        """Where the weights are: ``device`` and ``dtype``."""
        return {"device": str(self.model.device),
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")}

    @property
    def grammar(self) -> Any:
        """The answer-format automaton over this tokenizer (built once, on first use)."""
        if self._grammar is None:
            from productvlm.constrained import AnswerGrammar, TokenVocab

            self._grammar = AnswerGrammar.within(TokenVocab.from_tokenizer(self.tokenizer),
                                                 self.answer_format(), self.max_new_tokens)
        return self._grammar

    def answer_format(self) -> tuple[Any, ...]:
        """This predictor's constrained answer (:func:`answer_format`)."""
        return answer_format(self.target_format, self.categories, self.title_alphabet,
                             self.title_max_chars)

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
                    pred = Prediction.from_answer(raw, self.target_format, currency=self.currency,
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

    def measure(self, images: Sequence[Any], answers: Sequence[Sequence[int]],
                texts: list[str], grid: Sequence[float],
                given: Sequence[tuple[str, str] | None] | None = None,
                answer_prices: bool = True) -> list[Signals]:
        """What :meth:`generate` measures (``grid``, ``given``, ``answer_prices`` as there)
        for answers another engine gave: ``answers`` their token ids (stop token included),
        ``texts`` their cut texts; one forward pass instead of a decode loop.

        >>> hf.measure(photos, [vllm_ids], [vllm_text], grid)  # doctest: +SKIP
        """
        import torch

        from productvlm.measure import forced_pass, measure_batch

        batch = self._inputs(self.encode(images))
        out, pooled = forced_pass(self.model, batch, answers, self._pad_id())
        with torch.inference_mode():
            return list(measure_batch(self.model, self.tokenizer, batch["input_ids"],
                                      batch["attention_mask"], out, texts, self.target_format,
                                      self._price_candidates(grid), pooled, given,
                                      answer_prices))

    def calibrated(self, pred: Prediction, signals: Signals | None) -> Prediction:
        """``pred`` with the calibrated interval, category probability and confidence."""
        if self.calibration is None or signals is None:
            return pred
        u: Uncertainty = self.calibration.uncertainty(signals, pred.category,
                                                      self.interval_level)
        pred.price_low, pred.price_high = u.price_low, u.price_high
        pred.interval_level, pred.category_prob = u.interval_level, u.category_prob
        pred.confidence = u.confidence
        doubts = []
        if u.typicality is not None and u.typicality < UNLIKE_TRAINING:
            doubts.append("the picture is unlike the training photos")
        if u.confidence is not None and u.confidence < self.low_confidence:
            doubts.append(f"confidence {u.confidence:.2f} < {self.low_confidence:.2f}")
        if (pred.price is not None and u.price_low is not None and u.price_high is not None
                and not u.price_low <= pred.price <= u.price_high):
            doubts.append(f"the price lies outside its own {u.interval_level:.0%} interval")
        if u.confidence is not None:
            pred.low_confidence = bool(doubts)
            pred.doubt = "; ".join(doubts) or None
        return pred

    def image_features(self, images: Sequence[Any]) -> Any:
        """Pooled image features (n x hidden) of ``images``, as the model sees them."""
        import numpy as np
        import torch

        from productvlm.measure import ImageFeatures

        out = []
        prompt = render_prompt(self.tokenizer, self.question)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = self._inputs(self.processor(text=[prompt] * len(chunk),
                                                images=[[im] for im in chunk],
                                                return_tensors="pt", padding=True,
                                                padding_side="left"))
            with ImageFeatures(self.model, batch["input_ids"]) as feats, torch.inference_mode():
                feats.run(batch)
            out.append(feats.pooled)
        return np.concatenate(out) if out else np.zeros((0, 0))

    def encode(self, images: Sequence[Any]) -> Any:
        """The processor's tensors (on the CPU) of one batch of photos with the prompt: the
        CPU work of a batch, which the batch engine does for the next batch while the model
        answers this one (:func:`productvlm.inference.batch.answer_batches`)."""
        if self._encoder is None:
            # a copy of its own: a fast tokenizer used from two threads at once (this one, and
            # the model's thread decoding answers) can fail with "Already borrowed"
            self._encoder = copy.deepcopy(self.processor)
        prompt = render_prompt(self._encoder.tokenizer, self.question)
        return self._encoder(text=[prompt] * len(images), images=[[im] for im in images],
                             return_tensors="pt", padding=True, padding_side="left")

    def _inputs(self, batch: Any) -> dict[str, Any]:
        device = self.model.device
        dtype = next(self.model.parameters()).dtype
        from productvlm.models.families import family_of

        pixels = family_of(self.model).pixels
        return {k: v.to(device, dtype=dtype) if k == pixels else v.to(device)
                for k, v in batch.items()}

    def generate(self, images: Sequence[Any], grid: Sequence[float] | None = None,
                 given: Sequence[tuple[str, str] | None] | None = None,
                 answer_prices: bool = True, encoded: Any = None,
                 ) -> tuple[list[str], list[Signals | None]]:
        """Raw answer texts (up to ``<|end|>``) for one batch of images and, with a price
        ``grid`` (the calibration's candidate prices), what :mod:`productvlm.measure` measures
        of each answer (and, per ``given`` (title, category), of the catalog's listing)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if not images:
            return [], []
        tok = self.tokenizer
        batch = self._inputs(encoded if encoded is not None else self.encode(images))
        processors = LogitsProcessorList()
        if self.constrained:
            try:
                processors.append(self.grammar.logits_processor(self.max_new_tokens))
            except ValueError as e:
                raise ProductVLMError(f"constrained decoding: {e}") from None
        measure = grid is not None
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False,
                                  num_beams=1, use_cache=True,
                                  eos_token_id=stop_token_ids(tok), pad_token_id=self._pad_id(),
                                  return_dict_in_generate=True,
                                  output_logits=measure,
                                  cache_implementation=None if self.cache == "dynamic"
                                  else self.cache)
        from productvlm.measure import ImageFeatures, measure_batch

        feats = (ImageFeatures(self.model, batch["input_ids"]) if measure
                 else contextlib.nullcontext())
        with feats, torch.inference_mode():
            out = self.model.generate(**batch, generation_config=config,
                                      logits_processor=processors)
        self.constraint_seconds += sum(getattr(p, "seconds", 0.0) for p in processors)
        texts = self._answer_texts(out.sequences[:, batch["input_ids"].shape[1]:].tolist())
        if not measure:
            return texts, [None] * len(texts)
        signals = measure_batch(self.model, tok, batch["input_ids"], batch["attention_mask"], out,
                                texts, self.target_format, self._price_candidates(grid),
                                feats.pooled, given, answer_prices)
        return texts, list(signals)

    def _answer_texts(self, new: list[list[int]]) -> list[str]:
        """The answers' texts (cut at the end token) from their ids, each row ending at its
        stop token (then padding) or cut at ``max_new_tokens``; keeps the rows' ids
        (``last_ids``), which were cut, and the tokens generated."""
        tok = self.tokenizer
        stops, end = stop_token_ids(tok), answer_end(tok)
        self._cut_rows, self.last_ids = set(), []
        for b, row in enumerate(new):  # a finished row is padded after its stop token
            ended = next((i + 1 for i, t in enumerate(row) if t in stops), None)
            self.tokens_generated += ended or len(row)
            self.last_ids.append(row[:ended] if ended else row)
            if ended is None:
                self._cut_rows.add(b)
        texts = tok.batch_decode(new, skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
        return [_cut(t, [end, tok.eos_token or end, tok.pad_token or end]) for t in texts]

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else stop_token_ids(tok)[-1]

    def _price_candidates(self, grid: Sequence[float]) -> Any:
        """:class:`productvlm.measure.PriceCandidates` for ``grid`` (kept while it is the
        same grid)."""
        from productvlm.measure import PriceCandidates

        if self._candidates is None or self._candidates.grid != list(grid):
            self._candidates = PriceCandidates(self.tokenizer, self.target_format, grid)
        return self._candidates


def answer_format(target_format: TargetFormat, categories: Sequence[str] | None,
                  title_alphabet: str | None, title_max_chars: int | None) -> tuple[Any, ...]:
    """The constrained answer's segments (:func:`productvlm.constrained.answer_template`):
    the target format, the training categories, the title bounded by the training titles'
    characters and longest length (with slack).

    >>> answer_format("seed", ["BAGS"], None, None)[3]
    Lit(options=('BAGS',))
    """
    from productvlm.constrained import answer_template

    longest = (math.ceil(title_max_chars * TITLE_SLACK) if title_max_chars
               else TITLE_MAX_CHARS)
    return answer_template(target_format, sorted(set(categories)) if categories else None,
                           title_max_chars=longest, title_alphabet=title_alphabet)


def _cut(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop and (at := text.find(stop)) != -1:
            text = text[:at]
    return text.strip()


def _load_weights(weights: str, adapter: Path | None, dtype: Any, hub_kernels: bool) -> Any:
    from transformers.utils import logging as hf_logging

    from productvlm.models.loading import load_model

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter predict's output
    try:
        # the base comes from resolve_model (it may differ from the path the adapter saved)
        return load_model(weights, adapter=adapter, dtype=dtype, hub_kernels=hub_kernels)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


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

