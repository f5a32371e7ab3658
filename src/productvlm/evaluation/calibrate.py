"""Fit a model's calibration on a prepared dataset: what `train` does at its end and
`evaluate` does for a model that has none (see productvlm.calibration for the method).

>>> cal = fit_calibration(predictor, ds["train"], ds["validation"])  # doctest: +SKIP
>>> cal.save(RunDir(out).calibration)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from productvlm.answer import ProductFields
from productvlm.calibration import Calibration
from productvlm.errors import ProductVLMError
from productvlm.inference.batch import Row, answer_rows
from productvlm.photostats import photo_stats

MAX_GRID = 512  # candidate prices scored per photo at most


def price_grid(prices: Any, max_size: int = MAX_GRID) -> list[float]:
    """The distinct training prices, thinned evenly in log price when there are too many.

    >>> price_grid([10.0, 20.0, 20.0, 5.0])
    [5.0, 10.0, 20.0]
    """
    unique = np.unique(np.asarray([float(p) for p in prices if p and float(p) > 0]))
    if len(unique) > max_size:
        keep = np.unique(np.round(np.linspace(0, len(unique) - 1, max_size)).astype(int))
        unique = unique[keep]
    return [float(p) for p in unique]


def ensure_calibration(predictor: Any, ds: Any, out: Any) -> None:
    """Give a predictor without a calibration one, fitted on ``ds``'s validation split and
    saved in ``out/calibration`` (the run's own is reused when it has one)."""
    if predictor.calibration is not None:
        return
    if "validation" not in ds or len(ds["validation"]) == 0:
        print("no validation split: answers carry no interval or confidence", file=sys.stderr)
        return
    try:
        cal = fit_calibration(predictor, ds["train"], ds["validation"], progress=True)
    except ProductVLMError as e:  # too small a split: say so, answer without intervals
        print(f"not calibrated: {e}", file=sys.stderr)
        return
    cal.save(out / "calibration")
    predictor.calibration = cal
    print(f"calibrated on {cal.stats['validation_rows']} validation rows: "
          f"{out / 'calibration'}", file=sys.stderr)


def _photo(split: Any, i: int) -> Any:
    """Row ``i``'s RGB photo, or why it has none (a broken stored photo: not a calibration
    row)."""
    try:
        return split[i]["image"].convert("RGB")
    except Exception as e:  # noqa: BLE001
        return f"image failed to decode: {e}"


def _images(split: Any, batch: int) -> Iterator[tuple[list[int], list[Any]]]:
    """(row indices, RGB photos) a batch at a time; rows whose photo fails are left out."""
    for start in range(0, len(split), batch):
        pairs = [(i, _photo(split, i)) for i in range(start, min(start + batch, len(split)))]
        ok = [(i, im) for i, im in pairs if not isinstance(im, str)]
        yield [i for i, _ in ok], [im for _, im in ok]


def fit_calibration(predictor: Any, train: Any, validation: Any, *,
                    progress: bool = False) -> Calibration:
    """Answer the validation photos with their price distributions, read the training
    photos' image features, and fit a :class:`Calibration` (the predictor is left as it was).
    """
    from rich.progress import Progress

    grid = price_grid(train["price"])
    if len(grid) < 2:
        raise ProductVLMError("calibration needs at least two distinct training prices")
    model = predictor.model
    was_training = getattr(model, "training", False)
    model.eval()
    signals, answers, truths = [], [], []
    meta = validation.select_columns(["title", "category", "price"]).to_list()
    train_cats = train["category"]
    try:
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("calibrating on the validation split", total=len(validation))
            rows = (Row(i, _photo(validation, i), (m["title"], m["category"]), m)
                    for i, m in enumerate(meta))
            for row, pred in answer_rows(rows, predictor, grid=grid,
                                         progress=lambda n: bar.advance(task, n)):
                sig = pred.signals
                if sig is None or sig.price_logprobs is None or not pred.category:
                    continue  # a photo that failed to decode, or an answer without a category
                signals.append(sig)
                answers.append(pred)
                truths.append(ProductFields(row.data["title"], row.data["category"],
                                            float(row.data["price"])))
            feats, cats, photos, titles, prices = [], [], [], [], []
            listings = train.select_columns(["title", "price"]).to_list()
            task = bar.add_task("image features of the training photos", total=len(train))
            for rows, images in _images(train, predictor.batch_size):
                feats.append(predictor.image_features(images))
                photos += [photo_stats(im) for im in images]
                cats += [train_cats[i] for i in rows]
                titles += [listings[i]["title"] for i in rows]
                prices += [float(listings[i]["price"]) for i in rows]
                bar.advance(task, len(rows))
    finally:
        model.train(was_training)
    return Calibration.fit(grid, signals, answers, truths, np.concatenate(feats), cats,
                           np.stack(photos), (titles, prices))
