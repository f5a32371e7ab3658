"""`productvlm audit`: check a whole catalog's listed prices against the model, ranked by
how surprising each is.

Usage:
    productvlm audit --model runs/demo/train data/catalog.parquet --out runs/audit
    productvlm audit --model RUN DBQ/Burberry.Product.prices.United.States --limit 500
    torchrun --nproc_per_node 2 -m productvlm.cli audit --model RUN catalog.csv --out OUT

The catalog is read as `prepare` reads it (presets, --map, image fetching with the cache,
failures.csv: every row is audited or has its reason). Each product's photo is answered and
its price distribution read after the catalog's own title and category
(productvlm.evaluation.listings); OUT gets audit.csv (ranked by surprise), audit.html (the
flagged products with their photos), failures.csv, audit.json (counts; with --faults, how
well the flags find the known errors, beside a category-median rule) and config.yaml.

Interrupted work resumes: finished batches are appended to OUT/parts/ as they are done, and
a rerun skips their rows. Under torchrun each process takes every n-th batch (the batches
are the same as in one process, so the audit is too) and rank 0 merges the parts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field, field_validator

from productvlm import dist
from productvlm.config import (
    HUB_KERNELS_HELP,
    HubKernels,
    StageConfig,
    parse_pairs,
    resolve_config,
    save_config,
)
from productvlm.errors import ProductVLMError
from productvlm.inference import BATCH_SIZE, INTERVAL_LEVEL


class AuditConfig(StageConfig):
    """What `productvlm audit` runs with; saved as config.yaml beside audit.csv."""

    model: str = Field(..., description="run directory (with its calibration/)")
    source: str = Field(..., description="catalog: any source `prepare` reads")
    out: Path = Field(Path("runs/audit"), description="output folder")
    preset: str | None = Field("burberry", description="column preset: burberry, simple, none")
    map: dict[str, str] = Field(default_factory=dict, description="field -> column, over it")
    source_split: str | None = Field(None, description="split of a Hugging Face source")
    currency: str = Field("", description="currency when the catalog has none")
    limit: int | None = Field(None, ge=1, description="audit only the first N rows")
    batch_size: int = Field(BATCH_SIZE, ge=1, description="photos per generation batch")
    interval_level: float = Field(INTERVAL_LEVEL, ge=0.5, le=0.99,
                                  description="level of the interval in audit.csv")
    flag_level: float = Field(0.99, ge=0.5, le=0.99, description="a listed price outside "
                              "this interval is flagged")
    faults: Path | None = Field(None, description="known errors (synth's faults.csv) to "
                                "score the audit against")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    hub_kernels: HubKernels = False
    fetch: dict[str, Any] = Field(default_factory=dict, description="image fetching "
                                  "(prepare's fetch: settings)")

    @field_validator("preset", mode="before")
    @classmethod
    def _none_preset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() in ("none", "") else v


def audit(cfg: AuditConfig) -> Path:
    """Audit ``cfg.source`` with ``cfg.model``; returns the path of audit.csv.

    >>> audit(AuditConfig(model="runs/demo/train", source="cat.parquet"))  # doctest: +SKIP
    PosixPath('runs/audit/audit.csv')
    """
    from productvlm.audit.outputs import merge_and_write, parts_of
    from productvlm.audit.work import audit_batches
    from productvlm.catalog.fetch_config import FetchConfig
    from productvlm.catalog.prepare import read_records
    from productvlm.catalog.schema import resolve_column_map
    from productvlm.catalog.sources import open_source
    from productvlm.inference import Predictor
    from productvlm.inference.batch import plan
    from productvlm.rundir import resolve_model

    rank, world = dist.rank(), dist.world_size()
    info = resolve_model(cfg.model)  # a wrong model fails before any work
    src = open_source(cfg.source, cfg.source_split)
    mapping = resolve_column_map(src.columns, cfg.preset, cfg.map, source=src.name)
    fetch = {"cache_dir": cfg.out / "image-cache", **cfg.fetch}
    if "local_root" not in cfg.fetch and src.root is not None:
        fetch["local_root"] = src.root.resolve()
    fetch_cfg = resolve_config(FetchConfig, None, fetch)
    failures: list[tuple[int, str, str]] = []
    records, rows_in = read_records(src, mapping, currency=cfg.currency, limit=cfg.limit,
                                    dedupe=False, failures=failures)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(cfg, cfg.out)
    predictor = Predictor.load(cfg.model, device=cfg.device, precision=cfg.precision,
                               hub_kernels=cfg.hub_kernels, batch_size=cfg.batch_size,
                               interval_level=cfg.interval_level)
    if predictor.calibration is None or not predictor.calibration.given_margins:
        raise ProductVLMError(f"{cfg.model}: no calibration for audits in the run directory; "
                              "run `productvlm evaluate` on it once to calibrate it")
    trained = info.run.read_training_items() if info.run else None
    parts = parts_of(cfg.out)
    done = parts.done()
    batches = plan([r.row for r in records], cfg.batch_size, done, rank, world)
    if done and rank == 0:
        print(f"resuming: {len(done)} rows already audited in {parts.folder}", file=sys.stderr)
    try:
        with parts.writer(rank) as write:
            audit_batches(records, batches, predictor, fetch_cfg, cfg, trained, write,
                          progress=rank == 0)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue ({parts.folder})",
              file=sys.stderr)
        raise
    dist.barrier()
    if rank != 0:
        return cfg.out / "audit.csv"
    return merge_and_write(cfg, rows_in, failures, predictor.calibration)


def register(app: typer.Typer) -> None:
    """Add the `audit` command."""

    @app.command("audit")
    def audit_command(
        source: str = typer.Argument(..., help="catalog: .csv, .jsonl, .parquet, a dataset "
                                     "folder or a Hugging Face dataset id"),
        model: str = typer.Option(..., "--model", "-m", help="run directory"),
        out: Path | None = typer.Option(None, "--out", "-o", help="output folder [runs/audit]"),
        preset: str | None = typer.Option(None, help="column preset: burberry, simple, none"),
        map: list[str] | None = typer.Option(None, "--map", help="FIELD=COLUMN over the preset"),
        source_split: str | None = typer.Option(None, help="split of a Hugging Face source"),
        limit: int | None = typer.Option(None, help="audit only the first N rows"),
        batch_size: int | None = typer.Option(None, help=f"photos per batch [{BATCH_SIZE}]"),
        interval_level: float | None = typer.Option(None, help="interval level [0.8]"),
        flag_level: float | None = typer.Option(None, help="flag outside this interval [0.99]"),
        faults: Path | None = typer.Option(None, help="known errors (faults.csv) to score"),
        local_root: Path | None = typer.Option(None, help="folder local image paths must be "
                                               "inside [the catalog's folder]"),
        cache_dir: Path | None = typer.Option(None, help="image cache [OUT/image-cache]"),
        device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1 [auto]"),
        precision: str | None = typer.Option(None, help="auto, bf16, fp16, fp32 [auto]"),
        hub_kernels: bool | None = typer.Option(None, "--hub-kernels/--no-hub-kernels",
                                                help=HUB_KERNELS_HELP + " [off]"),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML (audit: section)"),
    ) -> None:
        """Check a catalog's listed prices against the model: audit.csv, audit.html."""
        fetch = {k: str(v) for k, v in (("local_root", local_root), ("cache_dir", cache_dir))
                 if v is not None}
        cfg = resolve_config(AuditConfig, config, dict(
            model=model, source=source, out=out, preset=preset,
            map=parse_pairs(map, "--map") or None, source_split=source_split, limit=limit,
            batch_size=batch_size, interval_level=interval_level, flag_level=flag_level,
            faults=faults, device=device, precision=precision, hub_kernels=hub_kernels,
            fetch=fetch or None),
            section="audit")
        path = audit(cfg)
        if dist.is_main_process():
            summary = json.loads((cfg.out / "audit.json").read_text())
            typer.echo(f"audited {summary['audited']} of {summary['rows_in']} rows, "
                       f"{summary['flagged']} flagged; {path} and {path.with_suffix('.html')}")
