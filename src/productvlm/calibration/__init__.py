"""How far to trust an answer: calibrated price intervals, category probability, confidence.

For each photo the Predictor measures three things besides the answer (:class:`Signals`):

* ``price_logprobs``: the model's log-probability of every candidate price (the distinct
  training prices, :attr:`Calibration.grid`) after its own "... Full Price: " prefix, each
  tokenized as the collator tokenizes an answer; a distribution over prices;
* ``answer_logprob``: the mean log-probability of the title and category tokens it chose;
* ``features``: the image side's mean image token (what the decoder sees of the photo).

A :class:`Calibration`, fitted on the validation split and stored in the run directory
(``calibration/``), turns them into:

* a **price interval** at any level from 50% to 99%: conformalized quantile regression (CQR,
  Romano et al. 2019) on log price, locally weighted. The model's own distribution gives the
  central band ``[q(a), q(1-a)]``; a wrong category makes that band confidently wrong, so
  the margin around it grows with the doubt about the category: ``[q(a) - Q w, q(1-a) + Q w]``
  with ``w = 1 + lambda (1 - category probability)``. The validation split gives ``Q``, so
  that the interval covers the truth for ``level`` of the validation rows (split conformal:
  the stated coverage holds on new data from the same catalog), and ``lambda`` (by 5-fold
  cross-validation inside the validation split: the narrowest intervals);
* the **category probability**: linear discriminant analysis on the image features (class
  means from the training split, one shared, shrunk covariance) with a temperature fitted on
  the validation split, read at the answer's category;
* an overall **confidence**: the chance that the answer's category is right and its price
  within 25% of the truth (a logistic regression on the validation split over the category
  probability and the answer's log-probability), times a typicality gate that goes to 0 for
  pictures unlike every validation photo: the lower of two gates, the smallest Mahalanobis
  distance of the image features to a category's mean and the Mahalanobis distance of the
  picture's layout statistics (:mod:`productvlm.photostats`: plain border, compact
  foreground, few long edges) to the training photos', each against the validation photos'
  distances;
* for an audit, the same price distribution read after the *catalog's* title and category
  (``given_logprobs``): an interval for the listed product (plain CQR, fitted on the
  validation rows with their own titles and categories) and the **surprise** of a listed
  price: how far it lies outside the distribution's middle half, in log price, with its
  conformal p-value among the validation rows' correct prices. With a words model
  (:mod:`productvlm.wordprice`, a cross-fitted ridge on the title's words and the category,
  fitted on the training split), the surprise adds the listed price's distance from the
  words' price (both in log price, so no weight to tune), and the validation scores are read
  the same way, so the level stays honest.

Where each choice came from: docs/calibration.md (measured on three synth catalogs).

>>> cal = Calibration.load(Path("runs/demo/train/calibration"))  # doctest: +SKIP
>>> cal.interval(signals.price_logprobs, 0.8)  # doctest: +SKIP
(1650.0, 2480.0)

The package: :mod:`.signals` (what is measured, what is read), :mod:`.intervals` (price
intervals, the listing's surprise and the conformal margins), :mod:`.core` (the
:class:`Calibration` record, category probability, typicality, confidence), :mod:`.fitting`
(fitting it on a validation split) and :mod:`.storing` (the ``calibration/`` folder).
"""

from productvlm.calibration.core import TYPICAL_TAIL, Calibration
from productvlm.calibration.fitting import PCA_DIMS, USABLE_APE
from productvlm.calibration.intervals import (
    DOUBT_WEIGHTS,
    LEVELS,
    central_band,
    conformal_quantile,
)
from productvlm.calibration.signals import Signals, Uncertainty
from productvlm.calibration.storing import FILE_ARRAYS, FILE_JSON

__all__ = ["DOUBT_WEIGHTS", "FILE_ARRAYS", "FILE_JSON", "LEVELS", "PCA_DIMS", "TYPICAL_TAIL",
           "USABLE_APE", "Calibration", "Signals", "Uncertainty", "central_band",
           "conformal_quantile"]
