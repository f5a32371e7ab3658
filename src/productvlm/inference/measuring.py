"""The measuring side of a :class:`~productvlm.inference.Predictor`: what :meth:`generate`
measures, for answers another engine gave (one forced pass); the calibrated reading of an
answer (interval, category probability, confidence, doubts); the photos' pooled image
features.

>>> pred = predictor.calibrated(pred, pred.signals)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from productvlm.calibration import Signals, Uncertainty
from productvlm.inference.record import UNLIKE_TRAINING, Prediction
from productvlm.prompts import render_prompt


class MeasureMixin:
    """:meth:`measure`, :meth:`calibrated` and :meth:`image_features` of a
    :class:`~productvlm.inference.Predictor` (mixed into it; they read the attributes its
    ``__init__`` sets and use its generation helpers)."""

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
