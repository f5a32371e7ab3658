"""`productvlm demo`: the whole pipeline on CPU in minutes (what `make demo` runs).

Usage:
    productvlm demo --out runs/demo
    productvlm demo --catalog my-catalog.csv --preset simple --map image=photo_path

synth (about 1,500 products) -> prepare -> a tokenizer trained on the catalog's text ->
a tiny Phi-3-vision trained from scratch (same architecture and code path as the 4.2B
model) -> evaluate on the test split -> report, with the figures printed beside the
baselines and the targets, and the training curves in ``train/curves.png``. W&B logs
offline unless you are logged in.

``--catalog`` takes the user's own catalog instead of synth's (any source ``productvlm
prepare`` reads, with its ``--preset`` and ``--map``), so the same recipe learns their
products. ``--model-family qwen2_5_vl``, ``smolvlm`` or ``phi4mm`` runs the recipe on a tiny
model of that family (transformers' own class, the family's tokenizer and processor).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field

from productvlm.config import StageConfig, parse_pairs, resolve_config, save_config
from productvlm.errors import ProductVLMError
from productvlm.options import config_command

#: the families the demo builds tiny models of (models/families.py's names)
DEMO_FAMILIES = ("phi3v", "qwen2_5_vl", "smolvlm", "phi4mm")


class DemoConfig(StageConfig):
    """Sizes of the demo: a tiny Phi-3-vision (the 4.2B model's architecture and code path)
    trained from scratch on a synth catalog, in about 7 minutes on 2 idle CPU cores.

    The image side is warmed up alone first (training/vision_warmup.py), then the whole model
    is fine-tuned; every default was chosen by trial on another catalog than the demo's own,
    and docs/demo-trials.md records those trials and their figures.
    """

    out: Path = Field(Path("runs/demo"), description="output folder of every stage")
    catalog: str | None = Field(None, description="your own catalog instead of synth's: any "
                                "source `productvlm prepare` reads")
    preset: str | None = Field(None, description="--catalog's column preset (prepare's: "
                               "burberry by default, simple, none)")
    map: dict[str, str] = Field(default_factory=dict,
                                description="--catalog's FIELD=COLUMN pairs over the preset, "
                                "e.g. --map title=name price=list_price")
    model_family: str = Field("phi3v", description="the tiny model's family: "
                              + ", ".join(DEMO_FAMILIES))
    attributes: bool = Field(False, description="the sample catalog's colour and material "
                             "columns become answer fields too: the model also says them")
    n: int = Field(1500, ge=50, description="products in the sample catalog (1,500: a test "
                   "split of ~143 photos, where one misread photo no longer decides the MAPE "
                   "check; docs/demo-trials.md)")
    seed: int = Field(0, description="seed of the catalog, the split and the training")
    fault_rate: float = Field(0.03, ge=0, le=0.5, description="broken rows, as real catalogs")
    vocab_size: int = Field(768, ge=300, description="tiny tokenizer vocabulary")
    hidden_size: int = Field(128, description="decoder width")
    layers: int = Field(3, description="decoder layers")
    dropout: float = Field(0.1, ge=0, lt=1, description="decoder residual dropout (resid_pdrop)")
    vision_hidden: int = Field(128, description="CLIP tower width")
    vision_layers: int = Field(4, description="CLIP tower layers")
    crop_size: int = Field(112, description="crop side in pixels (multiple of 28)")
    epochs: float = Field(12.0, gt=0, description="training epochs")
    learning_rate: float = Field(7e-4, gt=0, description="learning rate of the decoder")
    vision_lr: float = Field(1e-4, gt=0, description="learning rate of the image side")
    vision_init: Literal["clip", "torch"] = Field(
        "torch", description="initialisation of the tiny CLIP tower (see tiny_model)")
    vision_warmup_epochs: float = Field(
        54.0, ge=0, description="epochs of training the image side alone first (0: off)")
    vision_warmup_lr: float = Field(2e-3, gt=0, description="learning rate of the warm-up")
    batch_size: int = Field(8, ge=1, description="photos a training step")
    hflip: float = Field(0.5, ge=0, le=1, description="chance of mirroring a training photo")
    threads: int = Field(1, ge=1, description="torch compute threads while training")
    num_workers: int = Field(1, ge=0, description="data loader processes (image work)")
    device: Literal["cpu", "auto", "cuda"] = Field(
        "cpu", description="where the tiny model trains and answers; cpu even on a GPU "
        "machine: a model this small is bound by the time of each of its many small steps, "
        "which a GPU does not shorten (docs/gpu.md)")
    report_to: str = Field("wandb", description="where training and evaluation are logged: "
                           "wandb (offline unless you are logged in) or none")


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    seconds: float
    checks: dict[str, bool]


def _texts(train_split: Any, schema: Any) -> list[str]:
    """The training answers, in the words the tiny tokenizer is trained on."""
    rows = train_split.select_columns(list(schema.columns)).to_list()
    return [schema.format(schema.truth(r)) for r in rows]


def tiny_base_model(cfg: DemoConfig, train_split: Any, schema: Any = None) -> Path:
    """The tiny random model of ``cfg.model_family`` the demo trains, with a tokenizer
    trained on the catalog's answers (``schema``'s fields), in the Hub format under
    ``cfg.out/base-model``.

    >>> tiny_base_model(DemoConfig(model_family="smolvlm"), ds["train"])  # doctest: +SKIP
    PosixPath('runs/demo/base-model')
    """
    from productvlm.answer import DEFAULT_SCHEMA

    folder = cfg.out / "base-model"
    texts = _texts(train_split, schema or DEFAULT_SCHEMA)
    if cfg.model_family != "phi3v":
        from productvlm.models.tiny_families import save_tiny_family

        return save_tiny_family(cfg.model_family, folder, texts,
                                vocab_size=cfg.vocab_size, seed=cfg.seed,
                                hidden_size=cfg.hidden_size, layers=cfg.layers,
                                vision_hidden=cfg.vision_hidden,
                                vision_layers=cfg.vision_layers, image_size=cfg.crop_size)
    from productvlm.models.phi3v.tiny import save_tiny_model, tiny_config
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer(texts, vocab_size=cfg.vocab_size)
    model_cfg = tiny_config(
        len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        intermediate_size=cfg.hidden_size * 2, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, resid_pdrop=cfg.dropout,
        vision={"hidden_size": cfg.vision_hidden, "intermediate_size": cfg.vision_hidden * 2,
                "num_hidden_layers": cfg.vision_layers, "image_size": cfg.crop_size},
    )
    return save_tiny_model(folder, config=model_cfg, tokenizer=tok, num_crops=1,
                           seed=cfg.seed, vision_init=cfg.vision_init)


def demo(cfg: DemoConfig) -> DemoResult:
    """Run synth -> prepare -> train -> evaluate under ``cfg.out``; returns the figures.

    >>> demo(DemoConfig(out=Path("runs/demo")))  # doctest: +SKIP
    """
    from rich.console import Console

    from productvlm.catalog.prepare import prepare
    from productvlm.evaluation.evaluate import EvalConfig, evaluate
    from productvlm.prepared import load_prepared, load_schema
    from productvlm.synth.generate import synth
    from productvlm.training.config import TrainConfig
    from productvlm.training.trainer import train

    if cfg.model_family not in DEMO_FAMILIES:
        raise ProductVLMError(f"--model-family {cfg.model_family!r}: the demo builds "
                              f"{', '.join(DEMO_FAMILIES)}")
    console = Console()
    started = time.perf_counter()
    save_config(cfg, cfg.out, name="demo-config.yaml")

    if cfg.catalog is None:
        console.rule("1/4 synth: a sample catalog with product photos")
        cat = synth(cfg.out / "catalog", n=cfg.n, seed=cfg.seed, fault_rate=cfg.fault_rate,
                    overwrite=True, attributes=cfg.attributes)
        console.rule("2/4 prepare: validate, fetch images, split")
        fields = {"colour": "colour", "material": "material"} if cfg.attributes else None
        prepare(str(cat.parquet), cfg.out / "prepared", preset="burberry", map=fields,
                seed=cfg.seed)
    else:  # the user's catalog, read, checked and split by prepare itself (its errors too)
        console.rule(f"1-2/4 prepare your catalog: {cfg.catalog}")
        prepare(cfg.catalog, cfg.out / "prepared", cfg.preset, cfg.map or None, seed=cfg.seed)

    console.rule(f"3/4 train: a tiny {cfg.model_family} model from scratch")
    data = load_prepared(cfg.out / "prepared")
    if "test" not in data or len(data["test"]) == 0:  # say so now, not after minutes of training
        raise ProductVLMError(f"{cfg.out / 'prepared'}: the test split is empty "
                              f"({len(data['train'])} training rows); the demo needs a few "
                              "hundred products, a dozen or more per category")
    schema = load_schema(cfg.out / "prepared")
    base = tiny_base_model(cfg, data["train"], schema)
    steps_per_epoch = max(1, len(data["train"]) // cfg.batch_size)
    train_cfg = TrainConfig(
        model=str(base), data=cfg.out / "prepared", out=cfg.out / "train", mode="full",
        freeze_vision=False, gradient_checkpointing=False, precision="fp32", num_crops=1,
        max_length=256, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
        batch_size=cfg.batch_size, warmup_ratio=0.05, weight_decay=0.01,
        logging_steps=10, eval_steps=steps_per_epoch * 3, save_steps=steps_per_epoch * 3,
        save_total_limit=2, eval_samples=32, seed=cfg.seed, report_to=cfg.report_to,
        num_workers=cfg.num_workers, hflip=cfg.hflip, vision_lr=cfg.vision_lr,
        vision_warmup_epochs=cfg.vision_warmup_epochs, vision_warmup_lr=cfg.vision_warmup_lr,
        run_name="demo", device=cfg.device,
    )
    # One compute thread plus one loader process keeps both cores busy; two OpenMP threads
    # on a tiny model spin against each other (and against anything else running) instead.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        train(train_cfg)
    finally:
        torch.set_num_threads(threads)
    curves = plot_curves(cfg.out / "train" / "train_log.jsonl", cfg.out / "train" / "curves.png")
    if curves is not None:
        console.print(f"training curves: {curves}")

    console.rule("4/4 evaluate on the test split")
    result = evaluate(EvalConfig(model=str(cfg.out / "train"), data=cfg.out / "prepared",
                                 split="test", out=cfg.out / "eval", report_to=cfg.report_to,
                                 device=cfg.device))
    seconds = time.perf_counter() - started
    checks = demo_checks(result.metrics, result.baselines, [f.name for f in schema.extras
                                                            if f.kind == "label"])
    for name, ok in checks.items():
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'MISS'}[/] {name}")
        if not ok:
            for line in miss_reasons(name, cfg.out / "eval" / "predictions.jsonl"):
                console.print(f"     {line}", markup=False, highlight=False)
    report = cfg.out / "eval" / "report.html"
    console.print(f"demo finished in {seconds / 60:.1f} min; report: {report}")
    return DemoResult(cfg.out, result.metrics, result.baselines, seconds, checks)


#: the validation figures the training callback logs, as (log key, label) for the curves
CURVE_METRICS = (("eval_gen_category_accuracy", "category accuracy"),
                 ("eval_gen_title_token_f1", "title token F1"),
                 ("eval_gen_parse_rate", "parse rate"))


def plot_curves(log: Path, png: Path) -> Path | None:
    """The training and validation loss, and the validation sample's answer figures, by
    step, from a run's train_log.jsonl into ``png``: a loss curve without W&B. None when the
    log has no loss to draw.

    >>> plot_curves(Path("runs/demo/train/train_log.jsonl"), Path("curves.png"))  # doctest: +SKIP
    """
    from matplotlib.figure import Figure  # Agg through the Figure API: no display needed
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if not log.is_file():
        return None
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def series(key: str) -> tuple[list[float], list[float]]:
        # by step: the callback's answer figures are entries of their own, with no epoch
        points = [(e["step"], e[key]) for e in entries if key in e and "step" in e]
        return [p[0] for p in points], [p[1] for p in points]

    if not series("loss")[0]:
        return None
    fig = Figure(figsize=(9, 3.4))
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key, label in (("loss", "training loss"), ("eval_loss", "validation loss")):
        loss_ax.plot(*series(key), marker="o" if key == "eval_loss" else None, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    # plain tick labels: the log axis's default 10^x ones go through mathtext, whose font
    # search prints a warning per missing font on a bare machine
    loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    loss_ax.yaxis.set_minor_formatter(NullFormatter())
    for key, label in CURVE_METRICS:
        metric_ax.plot(*series(key), marker="o", label=label)
    metric_ax.set(xlabel="step", ylim=(0, 1.02), title="validation sample's answers")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    return png


def miss_reasons(check: str, predictions: Path, top: int = 3) -> list[str]:
    """What makes a missed check, from evaluate's predictions.jsonl: the rows that make most
    of the price MAPE, the categories most often mistaken, the worst titles, or the answers
    that did not parse.

    >>> miss_reasons("price MAPE ...", Path("runs/demo/eval/predictions.jsonl"))  # doctest: +SKIP
    ['3 of 95 rows make 9.1 points of the MAPE:', "'Grey Silk Scarf' (SCARVES, 450.00) ..."]
    """
    if not predictions.is_file():
        return []
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    said = lambda r: (f"'{r['truth']['title']}' ({r['truth']['category']}, "  # noqa: E731
                      f"{r['truth']['price']:,.2f}) read as '{r['parsed']['title']}' "
                      f"({r['parsed']['category']}, {r['parsed']['price'] or 0:,.2f})")
    if check.startswith("price MAPE"):
        apes = sorted((r["scores"]["price_ape"] or 0.0, i) for i, r in enumerate(rows))[::-1]
        worst = apes[:top]
        share = 100 * sum(a for a, _ in worst) / len(rows)
        return [f"{len(worst)} of {len(rows)} rows make {share:.1f} points of the MAPE:",
                *(said(rows[i]) for _, i in worst)]
    if check.split()[1:2] == ["accuracy"]:  # the category's or a label field's (colour, ...)
        from collections import Counter

        field = check.split()[0]  # category, or an answer field (colour, ...)
        wrong = Counter((r["truth"][field], r["parsed"].get(field)) for r in rows
                        if not r["scores"][f"{field}_correct"])
        return ["most often mistaken: " + "; ".join(
            f"{t} read as {p} ({n}x)" for (t, p), n in wrong.most_common(top))] if wrong else []
    if check.startswith("title"):
        worst = sorted(rows, key=lambda r: r["scores"]["title_token_f1"])[:top]
        return ["the titles furthest off:", *(said(r) for r in worst)]
    if check.startswith("parse"):
        bad = [r for r in rows if not r["ok"]]
        return [f"{len(bad)} answers did not parse, e.g. {bad[0]['error']}: "
                f"{bad[0]['answer']!r}"] if bad else []
    return []


def demo_checks(metrics: dict[str, Any], baselines: dict[str, dict[str, Any]],
                labels: list[str] | tuple[str, ...] = ()) -> dict[str, bool]:
    """The demo's targets, each against the baselines computed on the same split; each
    extra label field of ``labels`` (colour, ...) must beat its majority baseline."""
    const, oracle = baselines["constant"], baselines["category_oracle"]
    fields = {
        f"{name} accuracy {metrics[f'{name}_accuracy']:.3f} > the training majority's "
        f"({const[f'{name}_accuracy']:.3f})":
            metrics[f"{name}_accuracy"] > const[f"{name}_accuracy"]
        for name in labels}
    return {
        f"category accuracy {metrics['category_accuracy']:.3f} >= 0.9":
            metrics["category_accuracy"] >= 0.9,
        f"price MAPE {metrics['price_mape']:.3f} <= half the train-median baseline's "
        f"({const['price_mape']:.3f})": metrics["price_mape"] <= 0.5 * const["price_mape"],
        f"price MAPE {metrics['price_mape']:.3f} < the true-category median's "
        f"({oracle['price_mape']:.3f})": metrics["price_mape"] < oracle["price_mape"],
        f"title token F1 {metrics['title_token_f1']:.3f} >= 0.8":
            metrics["title_token_f1"] >= 0.8,
        f"parse rate {metrics['parse_rate']:.3f} >= 0.99": metrics["parse_rate"] >= 0.99,
        **fields,
    }


def register(app: typer.Typer) -> None:
    """Add the `demo` command (its options: :class:`DemoConfig`)."""

    @config_command(app, "demo", DemoConfig, section="demo",
                    context_settings={"allow_extra_args": True})
    def demo_command(ctx: typer.Context, given: dict[str, Any],
                     config_file: Path | None) -> None:
        """Run the whole pipeline on CPU in minutes: a tiny model trained from scratch on a
        sample catalog (or on yours: --catalog), then evaluated."""
        if ctx.args:  # --map a=x b=y: b=y arrives as an extra argument
            given["map"] = {**given.get("map", {}), **parse_pairs(ctx.args, "--map")}
        cfg = resolve_config(DemoConfig, config_file, given, section="demo")
        if (cfg.map or cfg.preset) and cfg.catalog is None:
            raise ProductVLMError("--map and --preset apply to --catalog: name your catalog")
        if cfg.attributes and cfg.catalog is not None:
            raise ProductVLMError("--attributes adds the sample catalog's colour and material; "
                                  "with --catalog, map your own: --map colour=COLUMN")
        demo(cfg)
