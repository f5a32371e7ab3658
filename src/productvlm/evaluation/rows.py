"""One evaluated example: the truth beside the Predictor's answer record, and the photo.

Every evaluation output (metrics, predictions.jsonl, plots, report, W&B) is built from a list
of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from productvlm.answer import ProductFields
from productvlm.inference import Prediction
from productvlm.inference.batch import Row


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


def thumb(image: Any, side: int = 256) -> Any:
    """A copy of ``image`` at most ``side`` pixels a side: what a row keeps of its photo for
    the report and W&B.

    >>> from PIL import Image
    >>> thumb(Image.new("RGB", (1000, 500))).size
    (256, 128)
    """
    small = image.copy()
    small.thumbnail((side, side))
    return small


def split_rows(split: Any, given: bool, offset: int = 0) -> Iterator[Row]:
    """The batch engine's rows of a prepared split (keys: positions + ``offset``; ``data``:
    the row's other columns), a photo decoded only when its batch is answered (a big split
    never sits in memory); a photo that fails to decode is that row's error, not the run's.
    ``given``: score the listing's own prices too (--faults).

    >>> [r.key for r in split_rows(ds["test"], False, offset=32)][:2]  # doctest: +SKIP
    [32, 33]
    """
    meta_cols = [c for c in split.column_names if c != "image"]
    for start in range(0, len(split), 256):
        chunk = split.select(range(start, min(start + 256, len(split))))
        for i, meta in enumerate(chunk.select_columns(meta_cols).to_list()):
            try:
                image: Any = chunk[i]["image"].convert("RGB")
            except Exception as e:  # noqa: BLE001  one broken image is that row's error
                image = f"image failed to decode: {e}"
            yield Row(offset + start + i, image,
                      (meta["title"], meta["category"]) if given else None, meta)
