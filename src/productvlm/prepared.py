"""The prepared dataset's contract: what `productvlm prepare` writes and every later stage reads.

A prepared folder holds::

    dataset/        a DatasetDict on disk (Arrow, memory-mapped): train, validation, test
    manifest.json   counts, splits, column map, answer fields, config, versions
    failures.csv    row, product_code, reason: every input row that is not in dataset/
    config.yaml     the PrepareConfig that made it

Each split has :data:`PREPARED_COLUMNS` with :func:`prepared_features` (images stored as
bytes), then a column per extra answer field (colour, material, ...; :func:`load_schema`).
``catalog/`` writes it through these names; training, evaluation, the demo and the audit
read it with :func:`load_prepared`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from productvlm.answer import DEFAULT_SCHEMA, AnswerField, AnswerSchema
from productvlm.errors import ProductVLMError

SPLITS = ("train", "validation", "test")
DATASET_DIR = "dataset"
MANIFEST = "manifest.json"
FAILURES = "failures.csv"
#: failures.csv's header. ``row`` numbers the source's data rows from 0 in source order, as
#: ``source_row`` in the dataset and ``row`` in synth's faults.csv do (see ROW_NUMBERING).
FAILURE_COLUMNS = ("row", "product_code", "reason")
ROW_NUMBERING = ("0-based: data rows counted from 0 in source order; in a CSV file the line "
                 "number minus 2 (line 1 is the header), in a JSONL file the n-th non-blank line "
                 "is row n-1")

#: Columns of a prepared dataset split, in order (see :func:`prepared_features`).
PREPARED_COLUMNS = ("product_code", "title", "category", "category1", "category2", "price",
                    "currency", "image", "image_sha256", "source_row")
#: What training and evaluation need in every split they read.
REQUIRED_COLUMNS = ("title", "category", "price", "image")


def prepared_features(extras: Sequence[AnswerField] = ()) -> Any:  # datasets.Features
    """The features of a prepared split: images stored as bytes, sha256, source row, then
    the answer's extra fields (a number as float64, else text). datasets is imported only
    when needed."""
    import datasets

    return datasets.Features({
        "product_code": datasets.Value("string"), "title": datasets.Value("string"),
        "category": datasets.Value("string"), "category1": datasets.Value("string"),
        "category2": datasets.Value("string"), "price": datasets.Value("float64"),
        "currency": datasets.Value("string"), "image": datasets.Image(),
        "image_sha256": datasets.Value("string"), "source_row": datasets.Value("int64"),
        **{f.column: datasets.Value("float64" if f.kind == "number" else "string")
           for f in extras},
    })


def load_schema(data: Path) -> AnswerSchema:
    """The answer schema a prepared folder was made with: its manifest's ``answer_fields``
    (the default schema for a folder without them, or a bare DatasetDict folder).

    >>> load_schema(Path("runs/demo/prepared")).extras  # doctest: +SKIP
    ()
    """
    manifest = Path(data) / MANIFEST
    if not manifest.is_file():
        return DEFAULT_SCHEMA
    try:
        fields = json.loads(manifest.read_text()).get("answer_fields")
    except json.JSONDecodeError as e:
        raise ProductVLMError(f"{manifest}: not valid JSON ({e})") from None
    return AnswerSchema.from_extras_json(fields)


def load_prepared(data: Path, splits: tuple[str, ...] = ("train", "validation")) -> Any:
    """Open a `productvlm prepare` output (or a DatasetDict folder) and check ``splits``.

    >>> ds = load_prepared(Path("runs/demo/prepared"))  # doctest: +SKIP
    >>> len(ds["train"]) > 0  # doctest: +SKIP
    True
    """
    import datasets

    data = Path(data)
    folder = data / DATASET_DIR if (data / DATASET_DIR).is_dir() else data
    if not folder.is_dir():
        raise ProductVLMError(f"{data}: prepared dataset not found; run `productvlm prepare` first")
    try:
        ds = datasets.load_from_disk(str(folder))
    except FileNotFoundError as e:
        raise ProductVLMError(f"{folder}: not a saved dataset ({e})") from None
    if not isinstance(ds, datasets.DatasetDict):
        raise ProductVLMError(f"{folder}: expected a dataset with splits {splits}, found one table")
    for split in splits:
        if split not in ds:
            raise ProductVLMError(f"{folder}: split '{split}' is missing; found {list(ds)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in ds[split].column_names]
        if missing:
            raise ProductVLMError(
                f"{folder}: split '{split}' lacks column(s) {missing}; "
                f"present: {ds[split].column_names}"
            )
    if "train" in splits and len(ds["train"]) == 0:
        raise ProductVLMError(f"{folder}: the train split is empty")
    return ds
