"""`productvlm audit`: check a whole catalog's listed prices against the model, ranked by
how surprising each is.

Usage:
    productvlm audit --model runs/demo/train data/catalog.parquet --out runs/audit
    productvlm audit --model RUN DBQ/Burberry.Product.prices.United.States --limit 500
    torchrun --nproc_per_node 2 -m productvlm.cli audit --model RUN catalog.csv --out OUT
    productvlm audit --model RUN catalog.parquet --out OUT --ray auto   # a Ray Data pool

The catalog is read as `prepare` reads it (presets, --map, image fetching with the cache,
failures.csv: every row is audited or has its reason). Each product's photo is answered and
its price distribution read after the catalog's own title and category
(productvlm.evaluation.listings); OUT gets audit.csv (ranked by surprise), audit.html (the
flagged products with their photos), failures.csv, audit.json (counts; with --faults, how
well the flags find the known errors, beside a category-median rule) and config.yaml.

Interrupted work resumes: finished batches are appended to OUT/parts/ as they are done, and
a rerun skips their rows. Under torchrun each process takes every n-th batch (the batches
are the same as in one process, so the audit is too) and rank 0 merges the parts; with
``--ray`` the same batches go to a Ray Data pool of model actors (inference/raydata.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from productvlm import dist
from productvlm.audit.config import AuditConfig
from productvlm.config import resolve_config, save_config
from productvlm.errors import ProductVLMError
from productvlm.options import Flag, config_command


def audit(cfg: AuditConfig) -> Path:
    """Audit ``cfg.source`` with ``cfg.model``; returns the path of audit.csv.

    >>> audit(AuditConfig(model="runs/demo/train", source="cat.parquet"))  # doctest: +SKIP
    PosixPath('runs/audit/audit.csv')
    """
    from productvlm.audit.outputs import merge_and_write, parts_of
    from productvlm.catalog.fetch_config import FetchConfig
    from productvlm.catalog.prepare import RecordStream
    from productvlm.catalog.schema import resolve_column_map
    from productvlm.catalog.sources import open_source
    from productvlm.inference.batch import plan, plan_stream
    from productvlm.inference.sizing import plan_rows
    from productvlm.rundir import resolve_model

    # one process, a torchrun process of many, or the driver of a Ray pool (then rank 0 of 1)
    rank, world = dist.rank(), dist.world_size()
    info = resolve_model(cfg.model)  # a wrong model fails before any work
    src = open_source(cfg.source, cfg.source_split)
    # the model's answer fields the catalog also lists (its column of the same name, or
    # --map NAME=COLUMN): audit.csv sets what the listing says beside what the photo shows
    listed = [f for f in info.schema.extras if cfg.map.get(f.name, f.name) in src.columns]
    mapping = resolve_column_map(src.columns, cfg.preset, cfg.map, source=src.name,
                                 extras=listed)
    fetch = {"cache_dir": cfg.out / "image-cache", **cfg.fetch}
    if "local_root" not in cfg.fetch and src.root is not None:
        fetch["local_root"] = src.root.resolve()
    fetch_cfg = resolve_config(FetchConfig, None, fetch)
    failures: list[tuple[int, str, str]] = []
    stream = RecordStream(src, mapping, failures, currency=cfg.currency, limit=cfg.limit,
                          dedupe=False, extras=listed, require_extras=False)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(cfg, cfg.out)
    calibration = audit_calibration(cfg.model, info, cfg.calibration)
    parts = parts_of(cfg.out)
    done = parts.done()
    if done and rank == 0:
        print(f"resuming: {len(done)} rows already audited in {parts.folder}", file=sys.stderr)
    try:
        if cfg.ray:  # the catalog streams, block by block, into payload files Ray Data reads
            batches = plan_stream(stream, plan_rows(cfg.batch_size), done, rank, world,
                                  key=lambda record: record.row)
            _audit_on_ray(cfg, batches, fetch_cfg)
        else:
            from productvlm.audit.work import audit_batches, load_audit_model

            # the model first: its batch size (auto: what fits the GPU) cuts the plan
            predictor, trained = load_audit_model(cfg)
            records = list(stream)
            todo = plan([r.row for r in records], predictor.batch_size, done, rank, world)
            with parts.writer(rank) as write:
                audit_batches(records, todo, predictor, fetch_cfg, cfg, trained, write,
                              progress=rank == 0)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue ({parts.folder})",
              file=sys.stderr)
        raise
    dist.barrier()
    if rank != 0:
        return cfg.out / "audit.csv"
    return merge_and_write(cfg, stream.rows_read, failures, calibration)


def audit_calibration(model: str, info: Any, folder: Path | None = None) -> Any:
    """The run's calibration (or ``folder``), which an audit needs (its listed-price
    margins), or a one-line error saying how to get one."""
    from productvlm.calibration import Calibration

    if folder is not None and not (folder / "calibration.json").is_file():
        raise ProductVLMError(f"{folder}: no calibration there (calibration.json); pass the "
                              "calibration/ folder that train or evaluate wrote")
    folder = folder or (info.run.calibration if info.run else None)
    cal = Calibration.load(folder) if folder is not None and folder.is_dir() else None
    if cal is None or not cal.given_margins:
        raise ProductVLMError(f"{model}: no calibration for audits; calibrate it with "
                              f"`productvlm evaluate --model {model} --data PREPARED --out "
                              "EVAL`, then audit with --calibration EVAL/calibration")
    return cal


def _audit_on_ray(cfg: AuditConfig, batches: Iterable[list[Any]], fetch_cfg: Any) -> None:
    """The planned batches (of catalog Records) through a Ray Data pool of audit actors
    (productvlm.audit.work), by way of payload files in ``OUT/ray-plan``."""
    from dataclasses import asdict

    from productvlm.audit.work import AuditActor
    from productvlm.inference.raydata import run_on_ray, write_payloads

    payloads = write_payloads(cfg.out / "ray-plan", (
        json.dumps([asdict(r) for r in b], ensure_ascii=False) for b in batches))
    for _ in run_on_ray(payloads, AuditActor, {"cfg": cfg.model_dump_json(),
                                               "fetch": fetch_cfg.model_dump_json()},
                        address=cfg.ray, actors=cfg.ray_actors):
        pass  # the rows are in the actors' part files
    shutil.rmtree(payloads.folder)  # done; a rerun plans afresh from the part files


def register(app: typer.Typer) -> None:
    """Add the `audit` command (its options: :class:`AuditConfig`)."""

    @config_command(app, "audit", AuditConfig, section="audit",
                    flags={"model": Flag("--model", "-m"), "out": Flag("--out", "-o")})
    def audit_command(
        given: dict[str, Any],
        config_file: Path | None,
        source: str = typer.Argument(...),
        local_root: Path | None = typer.Option(None, help="folder local image paths must be "
                                               "inside (default: the catalog's folder)"),
        cache_dir: Path | None = typer.Option(None, help="image cache (default: "
                                              "OUT/image-cache)"),
    ) -> None:
        """Check a catalog's listed prices against the model: audit.csv, audit.html."""
        fetch = {k: str(v) for k, v in (("local_root", local_root), ("cache_dir", cache_dir))
                 if v is not None}
        if fetch:  # fetch: settings by their own flags
            given["fetch"] = {**given.get("fetch", {}), **fetch}
        cfg = resolve_config(AuditConfig, config_file, given, section="audit")
        path = audit(cfg)
        if dist.is_main_process():
            summary = json.loads((cfg.out / "audit.json").read_text())
            typer.echo(f"audited {summary['audited']} of {summary['rows_in']} rows, "
                       f"{summary['flagged']} flagged; {path} and {path.with_suffix('.html')}")
