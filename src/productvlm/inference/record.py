"""The one answer record, :class:`Prediction`, and the prediction defaults every command
shares (evaluate, predict, serve, audit, the training callback).

>>> Prediction.from_answer("Product: Lola Bag, Category: BAGS, Full Price: 2,290.00").ok
True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from productvlm.answer import CORE, DEFAULT_SCHEMA, AnswerSchema, ParsedAnswer, TargetFormat
from productvlm.calibration import Signals

#: Prediction defaults, for every command that predicts (evaluate, predict, serve, audit, the
#: training callback): photos per generation batch, and the longest answer in tokens.
BATCH_SIZE = 16
MAX_NEW_TOKENS = 64
#: ... the price interval's level, and the confidence under which an answer is marked as low
INTERVAL_LEVEL = 0.8
LOW_CONFIDENCE = 0.5
#: typicality under which a picture is said to be unlike the training photos (a non-product)
UNLIKE_TRAINING = 0.5


def _said(description: str) -> Any:
    """A record field that defaults to None, with the description the API shows for it."""
    return field(default=None, metadata={"description": description})


@dataclass
class Prediction(ParsedAnswer):
    """The one answer record: what evaluate, predict, serve and audit get for a photo.

    The parsed fields (title, category, price, and the answer schema's extra fields in
    ``extra``; ``error`` says why one is missing), the raw
    text, the catalog's currency, and how long its batch took. ``ok`` is False when the
    answer did not parse, or (``raw`` None) when there was no answer at all (an unreadable
    photo: ``error`` says why). With a calibrated model: the price interval at
    ``interval_level``, the probability that the category is right, and ``confidence``, the
    chance that the category is right and the price within 25% (near 0 for a picture unlike
    the training photos); ``low_confidence`` when it is under the predictor's threshold, the
    picture is unlike the training photos, or the price lies outside its own interval, and
    ``doubt`` says which. Without a calibration these are None.
    """

    currency: str | None = None
    raw: str | None = _said("the model's answer as it wrote it")
    latency_ms: float | None = _said("wall time of the batch this photo was answered in")
    price_low: float | None = _said("low end of the price interval")
    price_high: float | None = _said("high end of the price interval")
    interval_level: float | None = _said("the interval holds the true price this often "
                                         "(calibrated, e.g. 0.8)")
    category_prob: float | None = _said("probability that the category is right")
    confidence: float | None = _said("chance that the category is right and the price within "
                                     "25%; near 0 for a picture unlike the products the model "
                                     "was trained on")
    low_confidence: bool | None = _said("confidence under the threshold, a picture unlike the "
                                        "training photos or a price outside its own interval: "
                                        "treat the answer as a guess")
    doubt: str | None = _said("why the answer is low_confidence, in words")
    #: what the calibration read (price distribution, image features): for evaluation and
    #: audit, never serialised
    signals: Signals | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_answer(cls, raw: str, fmt: TargetFormat = "seed", *, currency: str | None = None,
                    latency_ms: float | None = None,
                    schema: AnswerSchema = DEFAULT_SCHEMA) -> Prediction:
        """Parse a raw answer into the record (the fields of ``schema``).

        >>> Prediction.from_answer("Product: Lola Bag, Category: BAGS, Full Price: 2,290.00").price
        2290.0
        """
        parsed = schema.parse(raw, fmt)
        return cls(parsed.title, parsed.category, parsed.price, parsed.error, parsed.extra,
                   currency=currency, raw=raw, latency_ms=latency_ms)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        """The record back from :meth:`to_dict` (``signals`` are not serialised); keys that
        are not the record's own are the extra fields.

        >>> p = Prediction("Lola Bag", "BAGS", 2290.0, extra={"colour": "Beige"})
        >>> Prediction.from_dict(p.to_dict()) == p
        True
        """
        names = {f.name for f in fields(cls)} - {"signals", "extra"}
        extra = {k: v for k, v in data.items() if k not in names and k != "ok"}
        return cls(**{k: v for k, v in data.items() if k in names}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON: predict --json's rows and the HTTP API's fields; the extra
        fields sit after the price, by name.

        >>> Prediction("Lola Bag", "BAGS", 2290.0, extra={"colour": "Beige"}).to_dict()["colour"]
        'Beige'
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("signals", "extra", "error")}
        head = {name: out.pop(name) for name in CORE}
        return {**head, **self.extra, **out, "ok": self.ok, "error": self.error}


__all__ = ["BATCH_SIZE", "INTERVAL_LEVEL", "LOW_CONFIDENCE", "MAX_NEW_TOKENS", "UNLIKE_TRAINING",
           "Prediction"]
