"""`productvlm train`: fine-tune Phi-3-vision on a prepared catalog with transformers' Trainer.

Usage:
    productvlm train --config configs/burberry-phi3v-lora.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml -m productvlm.cli train ...

The run directory gets: checkpoints/ (resumable with --resume), adapter/ (LoRA modes),
merged/ (Hub format), processor/, config.yaml, labels.json, train_log.jsonl.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from productvlm.config import (
    load_saved_config,
    parse_pairs,
    resolve_config,
    save_config,
)
from productvlm.dist import is_main_process
from productvlm.errors import ProductVLMError
from productvlm.options import Flag, config_command
from productvlm.rundir import RunDir, last_complete_checkpoint
from productvlm.training.config import RESUMABLE_CHANGES, TrainConfig


@dataclass
class TrainResult:
    out: Path
    global_step: int
    train_loss: float | None
    best_checkpoint: str | None


def _check_resume(cfg: TrainConfig) -> None:
    saved_path = RunDir(cfg.out).config
    if not saved_path.is_file():
        raise ProductVLMError(f"{cfg.out}: nothing to resume (no config.yaml); drop --resume")
    saved = load_saved_config(TrainConfig, cfg.out)
    new, old = cfg.model_dump(), saved.model_dump()
    changed = sorted(k for k in new if new[k] != old[k] and k not in RESUMABLE_CHANGES)
    if changed:
        diff = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed)
        raise ProductVLMError(
            f"{saved_path}: --resume with a changed config ({diff}); "
            "restore those values or train into a new --out"
        )


def _trainer_class(vision_lr: float | None, packing: bool) -> type:
    """transformers' Trainer, giving the image side its own learning rate (``vision_lr``) and
    packing each batch's rows into one sequence (``packing``, training/packing.py)."""
    from transformers import Trainer

    from productvlm.models.families import family_of, vision_param
    from productvlm.training.packing import Packer

    class ProductTrainer(Trainer):
        _packer: Packer | None = None

        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any,
                         **kwargs: Any) -> Any:
            # evaluation's loss comes through here too, so it is packed the same way
            if packing:
                if self._packer is None:
                    self._packer = Packer(self.model)
                inputs = self._packer(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

        # Each of Trainer's groups (decay / no decay) is split in two, so weight decay, the
        # schedule's warm-up and decay, and checkpoints of the optimizer all work as before.
        def create_optimizer(self, model: Any = None) -> Any:
            optimizer = super().create_optimizer(model)
            if vision_lr is None:
                return optimizer
            net = model or self.model
            base = net.get_base_model() if hasattr(net, "get_base_model") else net
            fam = family_of(base)
            vision = {id(p) for n, p in net.named_parameters() if vision_param(fam, n)}
            for group in list(optimizer.param_groups):
                moved = [p for p in group["params"] if id(p) in vision]
                if moved:
                    group["params"] = [p for p in group["params"] if id(p) not in vision]
                    extra = {k: v for k, v in group.items() if k != "params"}
                    optimizer.add_param_group({**extra, "params": moved, "lr": vision_lr})
            return optimizer

    return ProductTrainer


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune per ``cfg`` and write the run directory; returns where and how far.

    >>> cfg = resolve_config(TrainConfig, "configs/burberry-phi3v-lora.yaml", section="train")
    >>> train(cfg)  # doctest: +SKIP
    """
    from transformers import set_seed

    from productvlm.models.compat import checkpointing_args
    from productvlm.models.loading import load_model, mixed_precision, pick_device
    from productvlm.models.processors import load_processor
    from productvlm.prepared import load_prepared, load_schema
    from productvlm.tracking import trainer_report_to
    from productvlm.training.callbacks import (
        GenerationEvalCallback,
        InterruptCallback,
        ThroughputCallback,
    )
    from productvlm.training.collate import AUGMENT, VLMCollator
    from productvlm.training.memory import plan_step, print_plan
    from productvlm.training.vision_warmup import warm_up_vision

    run = RunDir(cfg.out)
    ckpt_dir = run.checkpoints
    last = None
    if cfg.resume:
        _check_resume(cfg)
        last = last_complete_checkpoint(ckpt_dir)
        if last is None and not (cfg.vision_warmup_epochs and
                                 run.vision_warmup_state.is_file()):
            raise ProductVLMError(f"{ckpt_dir}: no checkpoint to resume from; drop --resume")
    ds = load_prepared(cfg.data)
    schema = load_schema(cfg.data)  # the answer's fields: the prepared catalog's
    set_seed(cfg.seed)
    has_validation = len(ds["validation"]) > 0
    if not has_validation:
        print(f"{cfg.data}: the validation split is empty: no evaluation, no best-checkpoint "
              "choice and no calibration in this run", file=sys.stderr)
    bf16, fp16 = mixed_precision(cfg.precision)
    device = pick_device(cfg.device)
    on_cuda = device.type == "cuda"
    import torch

    if on_cuda and not torch.cuda.is_available():
        raise ProductVLMError("device cuda: this machine has no CUDA device; use auto or cpu")
    report_to = trainer_report_to(cfg.report_to, project=cfg.wandb_project, out=cfg.out,
                                  log_model=cfg.log_model)

    model = load_model(cfg.model, cfg=cfg)
    if cfg.liger:
        from productvlm.models.kernels import apply_liger

        print(apply_liger(model, device), file=sys.stderr)
    processor = load_processor(cfg.model, options=cfg.image_options())
    if is_main_process():  # before the warm-up, so that an interrupted one can --resume
        save_config(cfg, cfg.out)
        train = ds["train"]
        column = lambda c: list(train[c]) if c in train.column_names else []  # noqa: E731
        run.write_labels(list(set(train["category"])), _currency(train), column("title"),
                         schema, {f.name: column(f.column) for f in schema.extras})
        run.write_training_items([str(c) for c in column("product_code")],
                                 column("image_sha256"), column("title"))
    interrupt = InterruptCallback()
    if cfg.vision_warmup_epochs and last is None:  # a checkpoint holds the warmed weights
        with interrupt.installed():
            warm_up_vision(model, processor, ds["train"], ds["validation"], cfg,
                           resume=cfg.resume, should_stop=lambda: interrupt.fired)
    collator = VLMCollator(processor, cfg.target_format, cfg.question, cfg.max_length,
                           hflip=cfg.hflip, shift=cfg.shift, schema=schema)
    plan = plan_step(model, collator, ds["train"], cfg, device)
    if is_main_process():
        print_plan(plan)

    args = _training_arguments(
        output_dir=str(ckpt_dir),
        run_name=cfg.run_name or cfg.out.name,
        per_device_train_batch_size=plan.micro_batch,
        per_device_eval_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a share of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        fp16=fp16,
        logging_steps=cfg.logging_steps,
        # without validation rows there is nothing to evaluate or to pick a best checkpoint by
        eval_strategy="steps" if has_validation else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_validation,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        **checkpointing_args(plan.checkpointing),
        dataloader_pin_memory=on_cuda,
        # without CUDA, say so: accelerate then runs torchrun's processes as MULTI_CPU (gloo)
        use_cpu=not on_cuda,
        remove_unused_columns=False,  # the collator needs the raw rows (image, price, ...)
        dataloader_num_workers=cfg.num_workers,
        report_to=report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_only_model=False,  # optimizer, scheduler and RNG states make --resume exact
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )
    throughput = ThroughputCallback(cfg.batch_size * cfg.grad_accum)
    callbacks: list[Any] = [interrupt]
    if cfg.eval_samples and has_validation:
        callbacks.append(GenerationEvalCallback(processor, ds["validation"], cfg))
    trainer = _trainer_class(cfg.vision_lr, plan.packing)(
        model=model,
        args=args,
        train_dataset=(ds["train"].add_column(AUGMENT, [True] * len(ds["train"]))
                       if cfg.hflip or cfg.shift else ds["train"]),
        eval_dataset=ds["validation"] if has_validation else None,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
    )
    # first in line, so the reporting callbacks (W&B, TensorBoard) log the figure it adds
    trainer.callback_handler.callbacks.insert(0, throughput)
    with interrupt.installed():
        output = trainer.train(resume_from_checkpoint=last)
    if interrupt.fired:
        raise ProductVLMError(
            f"interrupted at step {trainer.state.global_step}; checkpoint saved in {ckpt_dir}; "
            "continue with --resume"
        )
    if trainer.is_world_process_zero():
        _write_outputs(trainer, processor, cfg)
        if cfg.calibrate and has_validation:
            _calibrate(trainer.model, processor, ds, cfg)
    if "wandb" in report_to:
        import wandb

        wandb.finish()  # flush the summary now, not at interpreter exit
    return TrainResult(cfg.out, trainer.state.global_step, output.training_loss,
                       trainer.state.best_model_checkpoint)


def _training_arguments(**kwargs: Any) -> Any:
    from transformers import TrainingArguments

    try:
        return TrainingArguments(**kwargs)
    except ValueError as e:  # a combination transformers refuses: say it in one line
        raise ProductVLMError(f"training settings: {str(e).splitlines()[0]}") from None


def _currency(train_split: Any) -> str:
    if "currency" not in train_split.column_names:
        return "USD"
    values = [c for c in train_split["currency"] if c]
    return max(set(values), key=values.count) if values else "USD"


def _calibrate(model: Any, processor: Any, ds: Any, cfg: TrainConfig) -> None:
    """Fit the run's calibration on the validation split (see productvlm.calibration); a
    split too small for it is said, not fatal: the model still predicts, without intervals."""
    from productvlm.evaluation.calibrate import fit_calibration
    from productvlm.inference import Predictor

    run = RunDir(cfg.out)
    categories, _ = run.read_labels()
    alphabet, longest = run.read_title_shape()
    predictor = Predictor(model, processor, target_format=cfg.target_format,
                          question=cfg.question, categories=categories,
                          batch_size=cfg.batch_size, title_alphabet=alphabet,
                          title_max_chars=longest)
    try:
        cal = fit_calibration(predictor, ds["train"], ds["validation"], progress=True)
    except ProductVLMError as e:
        print(f"not calibrated: {e}", file=sys.stderr)
        return
    cal.save(run.calibration)
    typer.echo(f"calibrated on {cal.stats['validation_rows']} validation rows: {run.calibration}")


def _write_outputs(trainer: Any, processor: Any, cfg: TrainConfig) -> None:
    from productvlm.models.merged import save_merged

    model, run = trainer.model, RunDir(cfg.out)
    processor.save_pretrained(run.processor)
    with open(run.train_log, "w") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    if cfg.mode != "full":
        model.save_pretrained(run.adapter)
    # QLoRA weights are 4-bit: merging needs a bf16 reload of the base, left to the user
    if cfg.mode == "full" or (cfg.merge and cfg.mode == "lora"):
        save_merged(model, processor, run.merged, base=cfg.model)


def register(app: typer.Typer) -> None:
    """Add the `train` command (its options: :class:`TrainConfig`)."""

    @config_command(app, "train", TrainConfig, section="train",
                    flags={"learning_rate": Flag("--learning-rate", "--lr")})
    def train_command(
        given: dict[str, Any],
        config_file: Path | None,
        set_: list[str] | None = typer.Option(None, "--set", help="any field: KEY=VALUE"),
    ) -> None:
        """Fine-tune on a prepared catalog; writes checkpoints, adapter and merged model."""
        given.update(parse_pairs(set_, "--set"))
        cfg = resolve_config(TrainConfig, config_file, given, section="train")
        result = train(cfg)
        typer.echo(f"trained {result.global_step} steps; run directory: {result.out}")
