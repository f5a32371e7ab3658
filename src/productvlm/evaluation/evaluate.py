"""`productvlm evaluate`: answer unseen photos, score them beside baselines, write a report.

Usage:
    productvlm evaluate --model runs/demo/train --data runs/demo/prepared --split test
    productvlm evaluate --model RUN --data PREPARED --ray auto   # on a Ray Data pool

Writes into ``--out`` (default ``<model>/eval-<split>``): predictions.jsonl, metrics.json,
report.html and config.yaml; prints every metric beside the baselines; logs to W&B.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field

from productvlm.config import save_config
from productvlm.errors import ProductVLMError
from productvlm.inference.options import BatchPredictionOptions
from productvlm.inference.vllm_engine import load_engine
from productvlm.options import config_command


class EvalConfig(BatchPredictionOptions):
    """What `productvlm evaluate` ran with; saved as config.yaml beside the report. Device,
    precision, engine, batch size, answer length and interval level are the prediction
    options every answering command shares (inference/options.py)."""

    model: str = Field(..., description="run directory, Hub-format folder or Hub id")
    data: Path = Field(..., description="output folder of `productvlm prepare`")
    split: str = Field("test", description="the split to answer and score")
    out: Path | None = Field(None, description="report folder (default: <model>/eval-<split>)")
    constrained: bool = Field(True, description="force answers into the target format")
    limit: int | None = Field(None, ge=1, description="evaluate the first N rows only")
    calibrate: bool = Field(True, description="answers with intervals and confidence (a "
                            "model without a calibration is calibrated first); off: plain")
    faults: Path | None = Field(None, description="known wrong listed prices (synth's "
                                "faults.csv): adds the audit's figures on this split")
    report_to: Literal["wandb", "none"] = Field("wandb", description="where the metrics, "
                                                "the report and the answers are logged")
    wandb_project: str = Field("productvlm", description="W&B project of the run")
    ray: str | None = Field(None, description="answer on Ray Data: 'local' (a Ray instance on "
                            "this machine), 'auto' (the cluster this machine is in) or an "
                            "address (ray://HOST:10001); unset: in this process")
    ray_actors: int | None = Field(None, ge=1, description="model actors in the Ray pool "
                                   "(default: one per GPU of the cluster, else per CPU)")


@dataclass
class EvalResult:
    out: Path
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Generate answers for ``cfg.split`` and score them; returns metrics and baselines.

    >>> evaluate(EvalConfig(model="runs/demo/train", data="runs/demo/prepared"))  # doctest: +SKIP
    """
    from rich.console import Console

    from productvlm.evaluation.baselines import compute_baselines, fields_from_records, median_price
    from productvlm.evaluation.listings import known_errors
    from productvlm.evaluation.metrics import all_metrics
    from productvlm.evaluation.outputs import console_table, log_to_wandb, write_predictions_jsonl
    from productvlm.evaluation.report import write_report
    from productvlm.evaluation.rows import PredictionRow
    from productvlm.evaluation.uncertainty import uncertainty_figures

    ds = _load_split(cfg)
    split = ds[cfg.split]
    if cfg.limit:
        split = split.select(range(min(cfg.limit, len(split))))
    if len(split) == 0:
        raise ProductVLMError(f"{cfg.data}: split '{cfg.split}' is empty; nothing to evaluate")
    out = cfg.out or _default_out(cfg)
    errors = known_errors(cfg.faults) if cfg.faults is not None else None
    schema = _schema(cfg, split)
    calibration, answered = _answered(cfg, ds, split, out, errors is not None)

    rows: list[PredictionRow] = []
    source_rows: list[int | None] = []
    with _progress(len(split)) as advance:
        for meta, pred, thumb in answered:
            source_rows.append(meta.get("source_row"))
            truth = schema.truth(meta)
            row_id = str(meta.get("product_code") or meta.get("source_row") or len(rows))
            rows.append(PredictionRow(row_id, truth, pred, thumb))
            advance(1)

    train = fields_from_records(ds["train"].select_columns(list(schema.columns)), schema)
    fallback = median_price(train)
    targets = [r.truth for r in rows]
    metrics = all_metrics(targets, [r.prediction for r in rows], fallback_price=fallback,
                          schema=schema)
    baselines = {
        name: all_metrics(targets, preds, fallback_price=fallback, schema=schema)
        for name, preds in compute_baselines(train, targets).items()
    }
    uncertainty = uncertainty_figures(rows, calibration, cfg.interval_level)
    metrics.update(uncertainty["metrics"])
    if errors is not None and calibration is not None:
        metrics.update(_audit_figures(rows, source_rows, errors, calibration))

    save_config(cfg, out)
    write_predictions_jsonl(out / "predictions.jsonl", rows, fallback_price=fallback,
                            schema=schema)
    meta = {
        "model": cfg.model,
        "data": str(cfg.data),
        "split": cfg.split,
        "rows": len(rows),
        "constrained": cfg.constrained,
    }
    report = write_report(out, rows, metrics, baselines, fallback_price=fallback, meta=meta,
                          uncertainty=uncertainty["curves"], schema=schema)
    Console().print(console_table(metrics, baselines))
    Console().print(f"report: {report}")
    if cfg.report_to == "wandb":
        _log_wandb(cfg, out, rows, metrics, baselines, log_to_wandb, uncertainty["curves"])
    return EvalResult(out, metrics, baselines)


def _answered(cfg: EvalConfig, ds: Any, split: Any, out: Path, given: bool,
              ) -> tuple[Any, Iterator[tuple[dict[str, Any], Any, Any]]]:
    """(the calibration the answers were read with, (row columns, answer, thumbnail) for each
    row in order): through the batch engine in this process, or on a Ray Data pool of model
    actors (``cfg.ray``). A model without a calibration is calibrated first (here)."""
    from productvlm.evaluation.calibrate import ensure_calibration
    from productvlm.evaluation.rows import split_rows, thumb
    from productvlm.inference.batch import answer_rows

    def load() -> Any:
        return load_engine(cfg.engine, cfg.model, device=cfg.device, precision=cfg.precision,
                           hub_kernels=cfg.hub_kernels, batch_size=cfg.batch_size,
                           max_new_tokens=cfg.max_new_tokens, constrained=cfg.constrained,
                           interval_level=cfg.interval_level)

    if cfg.ray:
        from productvlm.calibration import Calibration
        from productvlm.evaluation.on_ray import answered_on_ray
        from productvlm.rundir import resolve_model

        info = resolve_model(cfg.model)
        folder = info.run.calibration if info.run else None
        calibration, fitted = None, None
        if cfg.calibrate and folder is not None and folder.is_dir():
            calibration = Calibration.load(folder)
        elif cfg.calibrate:  # fitted here, once, then read by every actor
            predictor = load()
            ensure_calibration(predictor, ds, out)
            calibration = predictor.calibration
            fitted = out / "calibration" if calibration is not None else None
            del predictor
        return calibration, answered_on_ray(cfg, fitted)

    predictor = load()
    if cfg.calibrate:
        ensure_calibration(predictor, ds, out)
    else:
        predictor.calibration = None
    pairs = answer_rows(split_rows(split, given), predictor)
    return predictor.calibration, ((row.data, pred, thumb(row.image) if row.readable else None)
                                   for row, pred in pairs)


def _audit_figures(rows: list[Any], source_rows: list[int | None], errors: dict[int, str],
                   calibration: Any) -> dict[str, Any]:
    """The audit's figures on this split, its listed prices judged against the known errors
    (flat keys: ``audit_<kind>_auc``, ... and ``audit_clean_flag_rate``)."""
    from productvlm.evaluation.listings import judge, mispricing_figures, rule_scores

    judged = [(r, errors.get(s, "clean")) for r, s in zip(rows, source_rows, strict=True)
              if r.prediction.signals is not None
              and r.prediction.signals.given_logprobs is not None]
    if not judged:
        return {}
    verdicts = [judge(r.prediction.signals, r.truth.price, calibration, title=r.truth.title,
                      category=r.truth.category) for r, _ in judged]
    figures = mispricing_figures(
        [k for _, k in judged], [v.surprise or 0.0 for v in verdicts],
        [v.flagged for v in verdicts],
        rule_scores([r.truth.price for r, _ in judged], [r.truth.category for r, _ in judged]))
    flat: dict[str, Any] = {}
    for kind, values in figures.items():
        if isinstance(values, dict):
            flat |= {f"audit_{kind}_{k}": v for k, v in values.items()}
        else:
            flat[f"audit_{kind}"] = values
    return flat


def _schema(cfg: EvalConfig, split: Any) -> Any:
    """The answer schema the model was trained with (its labels.json), checked against the
    split's columns: an extra field needs its truth there."""
    from productvlm.rundir import resolve_model

    schema = resolve_model(cfg.model).schema
    missing = [c for c in schema.columns if c not in split.column_names]
    if missing:
        raise ProductVLMError(
            f"{cfg.data}: split '{cfg.split}' lacks the column(s) {missing} of the model's "
            f"answer fields; prepare the data with --map {missing[0]}=COLUMN as the model's was")
    return schema


def _load_split(cfg: EvalConfig) -> Any:
    from productvlm.prepared import load_prepared

    ds = load_prepared(cfg.data)
    if cfg.split not in ds:
        raise ProductVLMError(
            f"{cfg.data}: split '{cfg.split}' does not exist; choose one of {list(ds)}"
        )
    return ds


def _default_out(cfg: EvalConfig) -> Path:
    base = Path(cfg.model)
    return (base if base.is_dir() else Path("runs")) / f"eval-{cfg.split}"


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar with answers/s; its value advances it by the rows of a batch."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("answering"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]} answers/s"),
        TimeElapsedColumn(),
    )
    with progress:
        task = progress.add_task("answering", total=total, rate="-")

        def advance(n: int) -> None:
            progress.advance(task, n)
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, rate=f"{progress.tasks[task].completed / elapsed:.1f}")

        yield advance


def _log_wandb(
    cfg: EvalConfig,
    out: Path,
    rows: list[Any],
    metrics: dict[str, Any],
    baselines: dict[str, dict[str, Any]],
    log_fn: Any,
    curves: dict[str, Any],
) -> None:
    from productvlm.tracking import start_wandb_run

    run = start_wandb_run(cfg.wandb_project, "evaluate", out, cfg.model_dump(mode="json"))
    try:
        log_fn(run, rows, metrics, baselines, uncertainty=curves)
    finally:
        run.finish()


def register(app: typer.Typer) -> None:
    """Add the `evaluate` command (its options: :class:`EvalConfig`)."""

    @config_command(app, "evaluate", EvalConfig, section="evaluate")
    def evaluate_command(cfg: EvalConfig) -> None:
        """Answer the split's photos, score them beside baselines, write report.html."""
        evaluate(cfg)
