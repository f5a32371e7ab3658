"""The options every command that answers photos shares (evaluate, predict, serve, audit),
declared once: how the model is loaded and run, and what an answer carries.

A stage's config derives from :class:`PredictionOptions` (serve, whose batch is its
micro-batcher's ``max_batch``) or :class:`BatchPredictionOptions` (evaluate, predict, audit),
so the fields, their defaults and their help (the CLI's, through productvlm.options) are the
same everywhere; they stay flat on the command line and in YAML (``device: cuda`` under
``predict:``), as before.

>>> from productvlm.predict import PredictConfig  # doctest: +SKIP
>>> issubclass(PredictConfig, BatchPredictionOptions)  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from productvlm.config import HubKernels, StageConfig
from productvlm.inference.record import INTERVAL_LEVEL, MAX_NEW_TOKENS
from productvlm.inference.sizing import BATCH_HELP, BatchSize
from productvlm.inference.vllm_engine import ENGINE_HELP, Engine

Precision = Literal["auto", "bf16", "fp16", "fp32"]


class PredictionOptions(StageConfig):
    """Device, precision, engine, answer length and interval level of a command that answers
    photos (the keyword arguments of :func:`productvlm.inference.vllm_engine.load_engine`)."""

    device: str = Field("auto", description="where the model answers: auto (a CUDA GPU where "
                        "there is one), cpu, cuda, cuda:1, ...")
    precision: Precision = Field("auto", description="weights' precision; auto: bf16 on a "
                                 "CUDA GPU that has it, else fp32")
    hub_kernels: HubKernels = False
    engine: Engine = Field("hf", description=ENGINE_HELP)
    max_new_tokens: int = Field(MAX_NEW_TOKENS, ge=1, description="longest answer, in tokens")
    interval_level: float = Field(INTERVAL_LEVEL, ge=0.5, le=0.99, description="level of the "
                                  "price intervals (with a calibrated model)")


class BatchPredictionOptions(PredictionOptions):
    """:class:`PredictionOptions` and the photos of a generation batch."""

    batch_size: BatchSize = Field("auto", description=BATCH_HELP)


__all__ = ["BatchPredictionOptions", "Precision", "PredictionOptions"]
