"""The typed config of `productvlm audit` (its own module: the Ray actors read it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from productvlm.config import HubKernels, StageConfig
from productvlm.inference import INTERVAL_LEVEL
from productvlm.inference.sizing import BATCH_HELP, BatchSize
from productvlm.inference.vllm_engine import ENGINE_HELP, Engine


class AuditConfig(StageConfig):
    """What `productvlm audit` runs with; saved as config.yaml beside audit.csv."""

    model: str = Field(..., description="run directory (with its calibration/)")
    calibration: Path | None = Field(None, description="a calibration folder other than the "
                                     "run's calibration/ (evaluate's OUT/calibration)")
    source: str = Field(..., description="catalog: any source `prepare` reads")
    out: Path = Field(Path("runs/audit"), description="output folder")
    preset: str | None = Field("burberry", description="column preset: burberry, simple, none")
    map: dict[str, str] = Field(default_factory=dict, description="field -> column, over it")
    source_split: str | None = Field(None, description="split of a Hugging Face source")
    currency: str = Field("", description="currency when the catalog has none")
    limit: int | None = Field(None, ge=1, description="audit only the first N rows")
    batch_size: BatchSize = Field("auto", description=BATCH_HELP)
    engine: Engine = Field("hf", description=ENGINE_HELP)
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
    ray: str | None = Field(None, description="run on Ray Data: 'local' (a Ray instance on "
                            "this machine), 'auto' (this machine's cluster) or a cluster "
                            "address; None: this process (or torchrun's)")
    ray_actors: int | None = Field(None, ge=1, description="model actors in the Ray pool "
                                   "(default: one per GPU of the cluster, else per CPU)")

    @field_validator("preset", mode="before")
    @classmethod
    def _none_preset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() in ("none", "") else v


__all__ = ["AuditConfig"]
