"""Trainer callbacks: clean Ctrl-C, throughput in the logs, generation-scored evaluation.

Validation loss alone says little about whether prices come out right, so at every
evaluation a fixed sample of validation photos is answered through the same prediction path
as `productvlm evaluate`, scored with the same metrics, and logged (with a W&B table of
images, truth and prediction when W&B is on).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the step, save a checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.fired = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.fired = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is not caught again

        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): leave as is
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if self.fired:
            control.should_save = True
            control.should_training_stop = True
        return control


class ThroughputCallback(TrainerCallback):
    """Adds samples/s (per process) over the last logging window to every training log."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self._t0: float | None = None
        self._step0 = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        self._t0, self._step0 = time.perf_counter(), state.global_step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs or self._t0 is None:
            return
        now = time.perf_counter()
        steps = state.global_step - self._step0
        if steps > 0:
            rate = round(steps * self.samples_per_step / (now - self._t0), 3)
            logs["samples_per_second"] = rate
            last = state.log_history[-1] if state.log_history else {}
            if last.get("step") == state.global_step and "loss" in last:
                last["samples_per_second"] = rate  # the Trainer copied logs before this ran
        self._t0, self._step0 = now, state.global_step


class GenerationEvalCallback(TrainerCallback):
    """At each evaluation, answer ``cfg.eval_samples`` validation photos and score them."""

    def __init__(self, processor: Any, validation: Any, cfg: Any) -> None:
        self.processor = processor
        n = min(cfg.eval_samples, len(validation))
        self.rows = validation.select(range(n))
        self.categories = sorted(set(validation["category"]))
        self.cfg = cfg

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if model is None or len(self.rows) == 0 or not state.is_world_process_zero:
            return
        from productvlm.evaluation.metrics import all_metrics
        from productvlm.inference import MAX_NEW_TOKENS, Predictor
        from productvlm.inference.batch import Row, answer_rows
        from productvlm.rundir import RunDir

        run = RunDir(self.cfg.out)
        alphabet, longest = run.read_title_shape()  # labels.json, written before training
        schema, domains = run.read_schema()
        predictor = Predictor(
            model=model, processor=self.processor, target_format=self.cfg.target_format,
            question=self.cfg.question, categories=self.categories,
            batch_size=args.per_device_eval_batch_size, max_new_tokens=MAX_NEW_TOKENS,
            title_alphabet=alphabet, title_max_chars=longest, schema=schema, domains=domains,
        )
        was_training = model.training
        model.eval()
        preds = [p for _, p in answer_rows((Row(i, r["image"]) for i, r in
                                            enumerate(self.rows)), predictor)]
        model.train(was_training)
        truths = [schema.truth(r) for r in self.rows]
        scores = all_metrics(truths, preds, schema=schema)
        gen = {f"eval_gen_{k}": v for k, v in scores.items() if isinstance(v, int | float)}
        if metrics is not None:
            metrics.update(gen)
        state.log_history.append({**gen, "step": state.global_step})
        self._log_wandb(args, state, truths, preds, gen)

    def _log_wandb(self, args: TrainingArguments, state: TrainerState, truths: list[Any],
                   preds: list[Any], gen: dict[str, float]) -> None:
        if "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is None:
            return
        table = wandb.Table(columns=["image", "truth", "prediction", "parsed", "step"])
        for row, truth, pred in zip(self.rows, truths, preds, strict=True):
            said = " | ".join(f"{v:,.2f}" if isinstance(v, float) else str(v)
                              for v in truth.values().values())
            table.add_data(wandb.Image(row["image"]), said, pred.raw, pred.ok,
                           state.global_step)
        wandb.log({"eval/predictions": table, **{f"eval/{k[5:]}": v for k, v in gen.items()},
                   "train/global_step": state.global_step})
