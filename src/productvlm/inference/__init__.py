"""Inference: the one prediction path, its answer record and the batch engine.

- :mod:`.record`: :class:`Prediction`, the answer record every command shares, and the
  prediction defaults;
- :mod:`.predictor`: :class:`Predictor`, batched (constrained) answers for photos, made of
  :mod:`.loader` (loading, describing), :mod:`.generation` (the decode path) and
  :mod:`.measuring` (measuring, the calibrated reading, image features);
- :mod:`.batch`: rows of any source -> (row, Prediction), in batches, sharded across
  processes, with ordered part files and resume.

>>> from productvlm.inference import Predictor
>>> Predictor.load("runs/demo/train").predict([photo])[0].title  # doctest: +SKIP
'Medium Lola Bag'
"""

from productvlm.inference.predictor import Predictor, Progress
from productvlm.inference.record import (
    BATCH_SIZE,
    INTERVAL_LEVEL,
    LOW_CONFIDENCE,
    MAX_NEW_TOKENS,
    Prediction,
)

__all__ = ["BATCH_SIZE", "INTERVAL_LEVEL", "LOW_CONFIDENCE", "MAX_NEW_TOKENS", "Prediction",
           "Predictor", "Progress"]
