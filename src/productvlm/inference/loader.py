"""Building a :class:`~productvlm.inference.Predictor` from a run directory, model folder
or Hub id (weights, adapter, processor, prompt, target format, categories, calibration),
and describing how it answers (the server's /v1/model).

>>> Predictor.load("runs/demo/train").describe()["engine"]  # doctest: +SKIP
'hf'
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from productvlm.calibration import Calibration
from productvlm.errors import ProductVLMError
from productvlm.inference.record import (
    BATCH_SIZE,
    INTERVAL_LEVEL,
    LOW_CONFIDENCE,
    MAX_NEW_TOKENS,
)
from productvlm.rundir import resolve_model


class LoadMixin:
    """:meth:`load`, :meth:`describe` and :meth:`placement` of a
    :class:`~productvlm.inference.Predictor` (mixed into it; they read the attributes its
    ``__init__`` sets)."""

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
    ) -> Self:
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
                   title_alphabet=info.title_alphabet, title_max_chars=info.title_max_chars,
                   schema=info.schema, domains=info.domains)

    def describe(self) -> dict[str, Any]:
        """How this predictor answers (shown by the server's /v1/model)."""
        return {"engine": "hf", "model_path": self.model_path, "adapter": self.adapter,
                "target_format": self.target_format, "question": self.question,
                "categories": self.categories, "currency": self.currency,
                "answer_fields": [{"name": f.name, "kind": f.kind, "words": f.words}
                                  for f in self.schema.extras],
                "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "constrained": self.constrained, "calibrated": self.calibration is not None,
                "interval_level": self.interval_level if self.calibration else None,
                "low_confidence_below": self.low_confidence if self.calibration else None,
                **self.placement()}

    def placement(self) -> dict[str, str]:
        """Where the weights are: ``device`` and ``dtype``."""
        return {"device": str(self.model.device),
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")}


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

