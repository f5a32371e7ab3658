"""`productvlm prepare`: from any catalog to a training-ready dataset, nothing lost.

Usage:
    productvlm prepare catalog.parquet --out data/prepared               # Burberry schema
    productvlm prepare DBQ/Burberry.Product.prices.United.States --out data/burberry
    productvlm prepare items.jsonl --out data/items --preset none \
        --map title=name category=type price=list_price image=photo

Four passes, none of which holds the images in memory:

1. read the source in batches, map its columns, validate every row (title, category, price,
   image source; exact duplicate rows dropped as "duplicate of row N");
2. fetch the images of the valid rows (concurrent, content-cached, results in input order)
   and append each fetched row, image bytes included, to a staging Arrow file (``staging.py``);
3. split: rows sharing a product code or an image sha256 stay together, categories are
   stratified, the seed decides (``split.py``);
4. copy the staging file batch by batch into one Arrow file per split, laid out as
   ``DatasetDict.save_to_disk`` does (``staging.py``), plus manifest.json, failures.csv and
   config.yaml.

Every input row ends in ``dataset/`` or in ``failures.csv``: rows in = prepared + failed.
Rerunning after an interruption re-reads the catalog but takes every image already fetched
from the cache (``OUT/image-cache`` unless ``--cache-dir`` says otherwise).
"""

from __future__ import annotations

import contextlib
import csv
import json
import platform
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import Field, field_validator, model_validator

from productvlm.answer import KNOWN_FIELDS, AnswerField, AnswerSchema, FieldKind
from productvlm.catalog.fetch import FetchConfig
from productvlm.catalog.schema import (
    Record,
    answer_extras,
    code_value,
    reason_key,
    resolve_column_map,
    validate_row,
)
from productvlm.catalog.sources import CatalogSource, open_source
from productvlm.catalog.split import assign_splits, group_rows
from productvlm.catalog.staging import fetch_and_stage, write_dataset
from productvlm.config import StageConfig, parse_pairs, resolve_config, save_config
from productvlm.errors import ProductVLMError
from productvlm.options import Flag, config_command
from productvlm.prepared import (
    DATASET_DIR,
    FAILURE_COLUMNS,
    FAILURES,
    MANIFEST,
    ROW_NUMBERING,
    SPLITS,
)


class PrepareConfig(StageConfig):
    """How ``productvlm prepare`` reads, validates, fetches and splits a catalog."""

    preset: str | None = Field("burberry", description="column preset: burberry, simple, or "
                               "none (only what --map names)")
    map: dict[str, str] = Field(default_factory=dict,
                                description="FIELD=COLUMN over the preset, e.g. --map "
                                "title=name price=list_price; an answer field (colour, "
                                "material, gender, size, brand, collection) adds it to the answer")
    fields: dict[str, FieldKind] = Field(default_factory=dict,
                                         description="NAME=KIND: a new answer field (KIND text, "
                                         "label or number), read from --map NAME=COLUMN or "
                                         "column NAME")
    source_split: str | None = Field(None, description="split of a Hugging Face source "
                                     "(default: train, or the only one)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of rows for validation")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="share of rows for test")
    seed: int = Field(0, description="seed of the split")
    currency: str = Field("", description="currency when the catalog has no currency column")
    limit: int | None = Field(None, ge=1, description="read only the first N rows (a trial)")
    read_batch_size: int = Field(1000, ge=1, description="rows read from the source at a time")
    fetch: FetchConfig = Field(default_factory=FetchConfig, description="image fetching")

    @field_validator("preset", mode="before")
    @classmethod
    def _none_preset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() in ("none", "") else v

    @model_validator(mode="after")
    def _fractions(self) -> PrepareConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave a share for train")
        return self

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)


@dataclass
class PrepareResult:
    """What ``prepare`` wrote and the counts it printed (rows_in == prepared + failed)."""

    out: Path
    rows_in: int
    prepared: int
    failed: int
    failed_by_reason: dict[str, int]
    split_sizes: dict[str, int]
    dataset_dir: Path = field(init=False)
    manifest_path: Path = field(init=False)
    failures_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dataset_dir = self.out / DATASET_DIR
        self.manifest_path = self.out / MANIFEST
        self.failures_path = self.out / FAILURES


@dataclass
class RecordStream:
    """Pass 1 as a stream: iterating yields each valid row's Record, in order, read from the
    source ``batch_size`` rows at a time; each invalid row (and, with ``dedupe``, each exact
    duplicate) is appended to ``failures`` instead. ``rows_read`` counts the rows read so far.
    So a catalog of millions of rows is never in memory at once (the audit on Ray plans from
    it block by block).

    >>> stream = RecordStream(open_source("c.csv"), mapping, failures=[])  # doctest: +SKIP
    >>> for record in stream: ...  # doctest: +SKIP
    """

    src: CatalogSource
    mapping: dict[str, str]
    failures: list[tuple[int, str, str]]
    currency: str = ""
    extras: Sequence[AnswerField] = ()  # the answer's extra fields, each a column
    require_extras: bool = True  # a row without one is a failure (else it is None)
    limit: int | None = None
    batch_size: int = 1000
    dedupe: bool = True
    rows_read: int = 0

    def __iter__(self) -> Iterator[Record]:
        first_of: dict[tuple, int] = {}
        self.rows_read = 0
        for i, row in self.src.rows(self.batch_size):
            if self.limit is not None and i >= self.limit:
                break
            self.rows_read += 1
            got = validate_row(row, self.mapping, self.currency, self.extras,
                               self.require_extras)
            if isinstance(got, str):
                has_code = isinstance(row, dict) and "product_code" in self.mapping
                code = code_value(row.get(self.mapping["product_code"])) if has_code else ""
                self.failures.append((i, code, got))
                continue
            got.row = i
            key = (got.product_code, got.title, got.category, got.category1, got.category2,
                   got.price, got.currency, got.image, *got.extra.values())
            j = first_of.setdefault(key, i) if self.dedupe else i
            if j != i:
                self.failures.append((i, got.product_code, f"duplicate of row {j}"))
                continue
            yield got
        if self.rows_read == 0:
            raise ProductVLMError(f"{self.src.name}: the catalog has no rows (a header at "
                                  "most); nothing to do: check the file or --source-split")


def read_records(src: CatalogSource, mapping: dict[str, str], *, currency: str = "",
                 limit: int | None = None, batch_size: int = 1000, dedupe: bool = True,
                 failures: list[tuple[int, str, str]],
                 extras: Sequence[AnswerField] = ()) -> tuple[list[Record], int]:
    """Pass 1: every row becomes a Record or a failure (appended to ``failures``); exact
    duplicate rows are failures too when ``dedupe``. Returns (records, rows read).

    >>> records, n = read_records(open_source("c.csv"), mapping, failures=[])  # doctest: +SKIP
    """
    stream = RecordStream(src, mapping, failures, currency=currency, limit=limit,
                          batch_size=batch_size, dedupe=dedupe, extras=extras)
    return list(stream), stream.rows_read


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("productvlm", "datasets", "pyarrow", "pillow", "pandas", "aiohttp"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def resolve_prepare_config(
    config_file: Path | None = None,
    map: dict[str, str] | None = None,
    fetch: dict[str, Any] | None = None,
    fields: dict[str, str] | None = None,
    **flags: Any,
) -> PrepareConfig:
    """Defaults < the file's ``prepare:`` section (or the whole file) < flags given.

    ``map`` and ``fields`` entries are merged over the file's, key by key, as are ``fetch``
    fields.
    """
    cfg = resolve_config(PrepareConfig, config_file, flags, section="prepare")
    fetch_given = {k: v for k, v in (fetch or {}).items() if v is not None}
    if map or fetch_given or fields:
        cfg = _with(cfg, map={**cfg.map, **(map or {})}, fields={**cfg.fields, **(fields or {})},
                    fetch={**cfg.fetch.model_dump(), **fetch_given})
    return cfg


def _with(cfg: PrepareConfig, **changes: Any) -> PrepareConfig:
    """``cfg`` with ``changes``, validated, errors reported like any flag's."""
    data = {**cfg.model_dump(), **changes}
    data["preset"] = data["preset"] or "none"  # resolve_config drops None: keep "no preset"
    return resolve_config(PrepareConfig, None, data)


def prepare(
    source: str,
    out: Path,
    preset: str | None = None,
    map: dict[str, str] | None = None,
    *,
    source_split: str | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int | None = None,
    currency: str | None = None,
    limit: int | None = None,
    concurrency: int | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
    local_root: Path | None = None,
    cache_dir: Path | None = None,
    config_file: Path | None = None,
    fields: dict[str, str] | None = None,
    progress: bool = True,
    verbose: bool = True,
    settings: dict[str, Any] | None = None,
) -> PrepareResult:
    """Map, validate, fetch images and split a catalog into ``out/`` (see the module doc).

    Arguments left ``None`` come from ``config_file`` or the defaults (preset ``burberry``,
    0.8/0.1/0.1, seed 0); ``preset="none"`` maps only the ``map`` fields. A ``map`` name
    that is an answer field (``colour``; or declared in ``fields``, name -> kind) adds it to
    the answer the model is taught (see :mod:`productvlm.answer`). ``progress`` draws the
    fetch bar, ``verbose`` prints the counts. ``settings`` holds any other
    :class:`PrepareConfig` values given (the command line's flags; ``fetch`` a dict). Relative
    image paths are read inside the catalog's folder unless ``local_root`` names another.

    >>> r = prepare("catalog.csv", Path("data/prepared"), preset="simple")  # doctest: +SKIP
    >>> r.rows_in == r.prepared + r.failed  # doctest: +SKIP
    True
    """
    import datasets  # noqa: F401  (fail early, before any work, if the install is broken)

    started = time.time()
    given = dict(settings or {})
    cfg = resolve_prepare_config(
        config_file, {**given.pop("map", {}), **(map or {})} or None,
        fields={**given.pop("fields", {}), **(fields or {})} or None,
        fetch={"concurrency": concurrency, "timeout_s": timeout_s, "retries": retries,
               "local_root": local_root, "cache_dir": cache_dir, **given.pop("fetch", {})},
        **{"preset": preset, "source_split": source_split, "val_fraction": val_fraction,
           "test_fraction": test_fraction, "seed": seed, "currency": currency,
           "limit": limit, **given},
    )
    src = open_source(source, cfg.source_split)
    extras = answer_extras(cfg.map, cfg.fields)
    mapping = resolve_column_map(src.columns, cfg.preset, cfg.map, source=src.name,
                                 extras=extras)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fetch_over: dict[str, Any] = {}
    if cfg.fetch.cache_dir is None:
        fetch_over["cache_dir"] = out / "image-cache"
    if cfg.fetch.local_root is None and src.root is not None:
        fetch_over["local_root"] = src.root.resolve()
    if fetch_over:  # record what was actually used, so config.yaml reproduces this run
        cfg = _with(cfg, fetch={**cfg.fetch.model_dump(), **fetch_over})
    say = _Say(verbose)
    say(f"reading {src.name} ({src.kind}); columns: "
        + ", ".join(f"{f}<-{c}" for f, c in mapping.items()))

    failures: list[tuple[int, str, str]] = []
    items, rows_in = read_records(src, mapping, currency=cfg.currency, limit=cfg.limit,
                                  batch_size=cfg.read_batch_size, failures=failures,
                                  extras=extras)
    say(f"{rows_in} rows read, {len(items)} valid; fetching {len(items)} images")
    staging = out / ".staging.arrow"
    try:
        keys, img_stats = fetch_and_stage(items, cfg.fetch, staging, progress, failures,
                                          extras)
        del items
        split_of = assign_splits([k[0] for k in keys], [k[1] for k in keys],
                                 [k[2] for k in keys], cfg.fractions, cfg.seed)
        sizes = write_dataset(staging, split_of, out / DATASET_DIR, extras)
    finally:
        staging.unlink(missing_ok=True)

    failures.sort()
    with (out / FAILURES).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FAILURE_COLUMNS)
        w.writerows(failures)
    by_reason = dict(Counter(reason_key(r) for _, _, r in failures).most_common())
    prepared = sum(sizes.values())
    if prepared + len(failures) != rows_in:  # the promise of this stage; never silently break it
        raise RuntimeError(f"bug: {rows_in} rows != {prepared} prepared + {len(failures)} failed")
    per_category: dict[str, dict[str, int]] = {}
    for (_, category, _), s in zip(keys, split_of, strict=True):
        per_category.setdefault(category, dict.fromkeys(SPLITS, 0))[s] += 1
    manifest = {
        "source": source,
        "source_kind": src.kind,
        "source_columns": src.columns,
        "column_map": mapping,
        "answer_fields": AnswerSchema().with_extras(extras).extras_json(),
        "counts": {"rows_in": rows_in, "prepared": prepared, "failed": len(failures),
                   "failed_by_reason": by_reason},
        "row_numbering": ROW_NUMBERING,
        "splits": sizes,
        "groups": len(set(group_rows([k[0] for k in keys], [k[2] for k in keys]))),
        "categories": dict(sorted(per_category.items())),
        "images": {"fetched": img_stats["fetched"], "cached": img_stats["cached"],
                   "failed": img_stats["failed"], "bytes": img_stats["bytes"]},
        "config": json.loads(cfg.model_dump_json()),
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    save_config(cfg, out)

    say(f"rows in {rows_in} = prepared {prepared} + failed {len(failures)}")
    if by_reason:
        say("failed: " + ", ".join(f"{k} {v}" for k, v in by_reason.items()))
    say("splits: " + ", ".join(f"{s} {n}" for s, n in sizes.items())
        + f"; images fetched {img_stats['fetched']}, from cache {img_stats['cached']}")
    say(f"wrote {out}/dataset, manifest.json, failures.csv, config.yaml")
    if prepared == 0 and rows_in:
        say(f"warning: no row could be prepared; see {out / FAILURES}")
    return PrepareResult(out, rows_in, prepared, len(failures), by_reason, sizes)


class _Say:
    def __init__(self, on: bool):
        self.on = on

    def __call__(self, msg: str) -> None:
        if self.on:
            print(msg, flush=True)


def _split_positionals(source: str, extra: list[str],
                       declared: Sequence[str] = ()) -> tuple[str, list[str]]:
    """``--map a=x b=y`` leaves ``b=y`` as a positional: take FIELD=COLUMN ones as map pairs
    (FIELD a canonical field, a known answer field or one declared with --field)."""
    from productvlm.catalog.schema import CANONICAL_FIELDS

    names = {*CANONICAL_FIELDS, *KNOWN_FIELDS, *declared}

    def is_pair(tok: str) -> bool:
        return tok.partition("=")[0].strip() in names and not Path(tok).exists()

    tokens = [source, *extra]
    pairs = [t for t in tokens if is_pair(t)]
    rest = [t for t in tokens if not is_pair(t)]
    if len(rest) != 1:
        raise ProductVLMError(
            f"expected one catalog source, got {len(rest)}: {' '.join(rest) or '(none)'}; "
            "a --map value is FIELD=COLUMN with FIELD one of " + ", ".join(CANONICAL_FIELDS)
        )
    return rest[0], pairs


def register(app: typer.Typer) -> None:
    """Add ``productvlm prepare`` to the CLI (its options: :class:`PrepareConfig`, the fetch
    settings flat: ``--concurrency``, ``--timeout``, ...)."""

    @config_command(app, "prepare", PrepareConfig, section="prepare", expand=("fetch",),
                    flags={"fetch.timeout_s": Flag("--timeout", "--timeout-s"),
                           "fields": Flag("--field")},
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def prepare_command(
        ctx: typer.Context,
        given: dict[str, Any],
        config_file: Path | None,
        source: str = typer.Argument(..., help="catalog: .csv, .jsonl, .json, .parquet, a "
                                     "dataset folder, or a Hugging Face dataset id"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
    ) -> None:
        """Map columns, validate rows, fetch images and split a catalog into a dataset.

        Writes OUT/dataset (train/validation/test splits), OUT/manifest.json,
        OUT/failures.csv (row, product_code, reason) and OUT/config.yaml.

        Rerun to resume: images already fetched come from the cache.
        """
        src, pairs = _split_positionals(source, list(ctx.args),
                                        list(given.get("fields", {})))
        if pairs:  # --map a=x b=y: b=y arrives as an extra argument
            given["map"] = {**given.get("map", {}), **parse_pairs(pairs, "--map")}
        prepare(src, out, config_file=config_file, progress=progress, settings=given)
