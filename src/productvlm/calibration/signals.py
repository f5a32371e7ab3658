"""What the Predictor measures for one photo (:class:`Signals`) and what a calibration reads
from it (:class:`Uncertainty`); see :mod:`productvlm.calibration`.

>>> Signals(answer_logprob=-0.2).answer_logprob
-0.2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Signals:
    """What the Predictor measured for one photo, before any calibration."""

    price_logprobs: np.ndarray | None = None  # over Calibration.grid, after the answer
    given_logprobs: np.ndarray | None = None  # ... after a given title and category (audits)
    answer_logprob: float | None = None  # mean over the title and category tokens
    features: np.ndarray | None = None  # pooled image features
    photo: np.ndarray | None = None  # the picture's layout statistics (photostats)


@dataclass
class Uncertainty:
    """A calibrated reading of one answer (fields of the Prediction record)."""

    price_low: float | None = None
    price_high: float | None = None
    interval_level: float | None = None
    category_prob: float | None = None
    confidence: float | None = None
    typicality: float | None = None  # 1: as typical as most validation photos; towards 0: odd
