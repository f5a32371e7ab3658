"""The two streaming passes of `productvlm prepare` that touch image bytes: fetched rows go to a
staging Arrow stream (pass 2), which is then copied split by split into the dataset folder
(pass 4). Neither holds more than one batch of images in memory.

>>> keys, stats = fetch_and_stage(records, FetchConfig(), staging, False, []) # doctest: +SKIP
>>> write_dataset(staging, ["train", "test", ...], out / "dataset")  # doctest: +SKIP
{'train': 800, 'validation': 100, 'test': 100}
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from productvlm.answer import AnswerField
from productvlm.catalog.fetch import FetchConfig, fetch_images
from productvlm.catalog.schema import Record
from productvlm.prepared import PREPARED_COLUMNS, SPLITS, prepared_features

# Staging batches are flushed at whichever limit comes first: small enough to keep memory
# flat with large photos, large enough that Arrow's per-batch overhead does not matter.
STAGE_ROWS = 64
STAGE_BYTES = 32 << 20


def fetch_and_stage(items: list[Record], fetch_cfg: FetchConfig, staging: Path, progress: bool,
                     failures: list[tuple[int, str, str]],
                     extras: Sequence[AnswerField] = ()) -> tuple[list[tuple], Counter]:
    """Pass 2: fetch images in order, append fetched rows to the staging Arrow stream
    (``extras``: the answer's extra fields, a column each).

    Returns (product_code, category, sha256) per staged row and image counts.
    """
    import pyarrow as pa

    schema = prepared_features(extras).arrow_schema
    keys: list[tuple[str, str, str]] = []
    stats: Counter = Counter()
    buf: dict[str, list] = {c: [] for c in (*PREPARED_COLUMNS, *(f.column for f in extras))}
    size = 0
    with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush() -> None:
            nonlocal size
            if buf["source_row"]:
                writer.write_batch(pa.RecordBatch.from_pydict(buf, schema=schema))
            for v in buf.values():
                v.clear()
            size = 0

        results = fetch_images([it.image for it in items], fetch_cfg, progress=progress)
        for it, res in zip(items, results, strict=True):
            if not res.ok:
                failures.append((it.row, it.product_code, f"image: {res.error}"))
                stats["failed"] += 1
                continue
            stats["cached" if res.cached else "fetched"] += 1
            stats["bytes"] += len(res.data)
            for c in PREPARED_COLUMNS[:7]:
                buf[c].append(getattr(it, c))
            buf["image"].append({"bytes": res.data, "path": None})
            buf["image_sha256"].append(res.sha256)
            buf["source_row"].append(it.row)
            for f in extras:
                buf[f.column].append(it.extra[f.name])
            keys.append((it.product_code, it.category, res.sha256))
            size += len(res.data)
            if len(buf["source_row"]) >= STAGE_ROWS or size >= STAGE_BYTES:
                flush()
        flush()
    return keys, stats


def write_dataset(staging: Path, split_of: list[str], dest: Path,
                  extras: Sequence[AnswerField] = ()) -> dict[str, int]:
    """Pass 4: stream the staging file into ``dest`` in ``DatasetDict.save_to_disk`` layout.

    datasets writes the metadata (features, state) of three empty splits; we add the data
    files ourselves, streaming, because ``save_to_disk`` would read the whole staged data
    through one memory map and count every image page in this process's RSS.
    """
    import datasets
    import numpy as np
    import pyarrow as pa

    features = prepared_features(extras)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    empty = {c: [] for c in features}
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict({
            s: datasets.Dataset.from_dict(empty, features=features) for s in SPLITS
        }).save_to_disk(str(tmp))
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
    codes = np.array([SPLITS.index(s) for s in split_of], dtype=np.int8)
    name = "data-00000-of-00001.arrow"
    sizes = dict.fromkeys(SPLITS, 0)
    digests = {s: hashlib.sha256(s.encode()) for s in SPLITS}
    writers = {s: pa.ipc.new_stream(str(tmp / s / name), features.arrow_schema) for s in SPLITS}
    try:
        with pa.OSFile(str(staging), "rb") as f:
            offset = 0
            for batch in pa.ipc.open_stream(f):
                part = codes[offset : offset + batch.num_rows]
                offset += batch.num_rows
                for k, s in enumerate(SPLITS):
                    mask = part == k
                    if mask.any():
                        sub = batch.filter(pa.array(mask))
                        writers[s].write_batch(sub)
                        sizes[s] += sub.num_rows
                        digests[s].update("".join(sub.column("image_sha256").to_pylist()).encode())
    finally:
        for w in writers.values():
            w.close()
    for s in SPLITS:  # point the split's state at its data file; a content-derived fingerprint
        state_path = tmp / s / "state.json"
        state = json.loads(state_path.read_text())
        state.update(_data_files=[{"filename": name}], _split=s,
                     _fingerprint=digests[s].hexdigest()[:16])
        state_path.write_text(json.dumps(state, indent=2, sort_keys=True))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sizes
