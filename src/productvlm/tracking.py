"""Experiment tracking: W&B by default (online when logged in, offline otherwise), or any
tracker transformers supports (tensorboard, mlflow), or none.

Training hands the choice to transformers' Trainer (:func:`trainer_report_to`); evaluate
opens a run of its own (:func:`start_wandb_run`). Offline runs stay on disk under the output
folder and are uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def wandb_logged_in() -> bool:
    """An API key in the environment or a ``wandb login`` in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """WANDB_MODE when set, else online when logged in, else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def trainer_report_to(report_to: str, *, project: str, out: Path,
                      log_model: bool = False) -> list[str]:
    """The Trainer's ``report_to`` list; for W&B, its environment set up first.

    >>> trainer_report_to("none", project="productvlm", out=Path("runs/x"))
    []
    """
    if report_to != "wandb":
        return [] if report_to == "none" else [report_to]
    os.environ.setdefault("WANDB_PROJECT", project)
    os.environ.setdefault("WANDB_DIR", str(out))
    if log_model:
        os.environ.setdefault("WANDB_LOG_MODEL", "end")
    if wandb_mode() == "offline":
        os.environ["WANDB_MODE"] = "offline"
    return ["wandb"]


def start_wandb_run(project: str, job_type: str, out: Path, config: dict[str, Any]) -> Any:
    """A W&B run of its own (evaluate, audit), written under ``out``; finish() it when done."""
    import wandb

    return wandb.init(project=project, job_type=job_type, dir=str(out), mode=wandb_mode(),
                      config=config, reinit="finish_previous")
