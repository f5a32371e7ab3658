"""One evaluated example: the truth beside the Predictor's answer record, and the photo.

Every evaluation output (metrics, predictions.jsonl, plots, report, W&B) is built from a list
of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from productvlm.inference import Prediction
from productvlm.prompts import ProductFields


@dataclass
class PredictionRow:
    """One evaluated example.

    ``image``: a PIL image, a file path, encoded bytes or None. A row whose image could not
    be read keeps its place with ``Prediction(error="image ...")`` (no raw answer), so it is
    reported and scored as unparsed rather than dropped.

    >>> PredictionRow("1", ProductFields("Lola Bag", "BAGS", 2290.0), Prediction()).answer
    ''
    """

    id: str
    truth: ProductFields
    prediction: Prediction
    image: Any = None

    @property
    def answer(self) -> str:
        """The model's raw answer text ("" when there was none)."""
        return self.prediction.raw or ""
