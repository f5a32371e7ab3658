"""Catalog readers: CSV, JSONL/JSON, Parquet and Hugging Face datasets, read in batches.

Every reader yields plain ``dict`` rows, numbered from 0 in source order (that number is the
``row`` of ``failures.csv`` and the ``source_row`` of the prepared dataset; in a CSV file it is
the line number minus 2). A row that cannot be read at all (a JSONL line that is not JSON) is
yielded as a :class:`BadRow`, so ``prepare`` reports it instead of losing it.

CSV cells are read as text (empty cells as ``""``): prices like "1,290.00" must reach
``parse_price`` as written, not be guessed into floats or NaN by a type sniffer.

>>> src = open_source("catalog.csv")  # doctest: +SKIP
>>> src.columns, next(src.rows())  # doctest: +SKIP
(['title', 'price', ...], (0, {'title': 'Medium Lola Bag', 'price': '1,290.00', ...}))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.rundir import is_hub_id

SUFFIXES = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class BadRow:
    """A source row that could not be parsed; ``reason`` goes to failures.csv."""

    reason: str


Row = dict[str, Any] | BadRow


@dataclass
class CatalogSource:
    """An opened catalog: its column names and a way to read its rows in batches."""

    name: str
    kind: str  # csv | jsonl | json | parquet | hf
    columns: list[str]
    num_rows: int | None = None
    #: folder that relative image paths in the catalog are relative to (None for the Hub)
    root: Path | None = None
    _read: Callable[[int], Iterator[list[Row]]] = field(default=lambda n: iter(()), repr=False)

    def batches(self, batch_size: int = 1000) -> Iterator[list[Row]]:
        """Rows in lists of at most ``batch_size``."""
        return self._read(batch_size)

    def rows(self, batch_size: int = 1000) -> Iterator[tuple[int, Row]]:
        """``(row number, row)`` pairs in source order, read ``batch_size`` at a time."""
        i = 0
        for batch in self.batches(batch_size):
            for row in batch:
                yield i, row
                i += 1


def open_source(source: str, split: str | None = None) -> CatalogSource:
    """Open a catalog by path (by suffix or folder) or by Hugging Face dataset id.

    A folder written by ``save_to_disk`` is loaded with ``datasets.load_from_disk``, any other
    folder with ``datasets.load_dataset(folder)``; a string that is not an existing path is a
    Hub id (e.g. ``DBQ/Burberry.Product.prices.United.States``).
    """
    path = Path(source).expanduser()
    if path.is_file():
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ProductVLMError(
                f"{path}: unknown catalog format {path.suffix!r}; use one of "
                f"{', '.join(SUFFIXES)}, a dataset folder or a Hugging Face dataset id"
            )
        opener = {"csv": _open_csv, "jsonl": _open_jsonl, "json": _open_json,
                  "parquet": _open_parquet}[kind]
        return opener(path)
    if path.is_dir():
        return _open_hf(str(path), split, local=True)
    if is_hub_id(source):
        return _open_hf(source, split, local=False)
    raise ProductVLMError(f"{source}: no such file or folder, and not a Hugging Face dataset id")


def _open_csv(path: Path) -> CatalogSource:
    import pandas as pd

    def read_header() -> list[str]:
        return [str(c) for c in pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns]

    def read(batch_size: int) -> Iterator[list[Row]]:
        chunks = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                             chunksize=batch_size)
        with _csv_errors(path):
            for chunk in chunks:
                yield chunk.to_dict("records")

    with _csv_errors(path):
        columns = read_header()
    return CatalogSource(str(path), "csv", columns, None, path.parent, read)


@contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """Turn pandas' parse errors into one-line ProductVLMErrors naming the file."""
    import pandas as pd

    try:
        yield
    except pd.errors.EmptyDataError:
        raise ProductVLMError(f"{path}: empty CSV file (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[-1]
        raise ProductVLMError(f"{path}: not a readable CSV file ({msg})") from None


def _parse_json_line(line: str, lineno: int) -> Row:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return BadRow(f"invalid JSON on line {lineno}: {e.msg}")
    if not isinstance(obj, dict):
        return BadRow(f"line {lineno} is not a JSON object")
    return obj


def _open_jsonl(path: Path) -> CatalogSource:
    def lines() -> Iterator[tuple[int, str]]:
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():  # blank lines are not rows
                    yield lineno, line

    def read(batch_size: int) -> Iterator[list[Row]]:
        batch: list[Row] = []
        for lineno, line in lines():
            batch.append(_parse_json_line(line, lineno))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # Columns are the union of keys over the whole file (one cheap extra pass), so a key
    # that first appears late is not reported missing.
    columns: dict[str, None] = {}
    n = 0
    for lineno, line in lines():
        n += 1
        row = _parse_json_line(line, lineno)
        if isinstance(row, dict):
            columns.update(dict.fromkeys(row))
    return CatalogSource(str(path), "jsonl", list(columns), n, path.parent, read)


def _open_json(path: Path) -> CatalogSource:
    head = path.read_text(encoding="utf-8-sig", errors="replace")[:4096].lstrip()
    if not head.startswith("["):
        return _open_jsonl(path)  # JSON Lines under a .json name
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ProductVLMError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    rows: list[Row] = [
        r if isinstance(r, dict) else BadRow(f"item {i} is not a JSON object")
        for i, r in enumerate(data)
    ]
    columns: dict[str, None] = {}
    for r in rows:
        if isinstance(r, dict):
            columns.update(dict.fromkeys(r))

    def read(batch_size: int) -> Iterator[list[Row]]:
        for i in range(0, len(rows), batch_size):
            yield rows[i : i + batch_size]

    return CatalogSource(str(path), "json", list(columns), len(rows), path.parent, read)


def _open_parquet(path: Path) -> CatalogSource:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ProductVLMError(f"{path}: not a readable Parquet file ({e})") from None

    def read(batch_size: int) -> Iterator[list[Row]]:
        for batch in pf.iter_batches(batch_size=batch_size):
            yield batch.to_pylist()

    return CatalogSource(
        str(path), "parquet", pf.schema_arrow.names, pf.metadata.num_rows, path.parent, read
    )


def _open_hf(source: str, split: str | None, local: bool) -> CatalogSource:
    import datasets

    try:
        if local and (Path(source, "dataset_dict.json").is_file()
                      or Path(source, "state.json").is_file()):
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(source)
    except Exception as e:  # network, auth, unknown id, unreadable folder: all user-fixable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProductVLMError(f"{source}: could not load the dataset ({msg})") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None:
            if "train" not in loaded and len(names) != 1:
                raise ProductVLMError(
                    f"{source}: several splits ({', '.join(names)}); pick one with --source-split"
                )
            split = "train" if "train" in loaded else names[0]
        if split not in loaded:
            raise ProductVLMError(
                f"{source}: no split {split!r}; splits present: {', '.join(names)}"
            )
        ds = loaded[split]
    else:
        ds = loaded
    for name, feat in ds.features.items():
        if isinstance(feat, datasets.Image):
            # Decoding every photo while reading would defeat streaming; ask for URLs or paths.
            ds = ds.cast_column(name, datasets.Image(decode=False))

    def read(batch_size: int) -> Iterator[list[Row]]:
        for batch in ds.iter(batch_size=batch_size):
            keys = list(batch)
            yield [dict(zip(keys, vals, strict=True)) for vals in zip(*batch.values(), strict=True)]

    root = Path(source) if local else None
    return CatalogSource(source, "hf", list(ds.column_names), len(ds), root, read)
