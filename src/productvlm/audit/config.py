"""The typed config of `productvlm audit` (its own module: the Ray actors read it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from productvlm.inference.options import BatchPredictionOptions


class AuditConfig(BatchPredictionOptions):
    """What `productvlm audit` runs with; saved as config.yaml beside audit.csv. Device,
    precision, engine, batch size, answer length and interval level (audit.csv's interval)
    are the prediction options every answering command shares (inference/options.py)."""

    model: str = Field(..., description="run directory (with its calibration/)")
    calibration: Path | None = Field(None, description="a calibration folder other than the "
                                     "run's calibration/ (evaluate's OUT/calibration)")
    source: str = Field(..., description="catalog: .csv, .jsonl, .parquet, a dataset folder "
                        "or a Hugging Face dataset id (any source `prepare` reads)")
    out: Path = Field(Path("runs/audit"), description="output folder")
    preset: str | None = Field("burberry", description="column preset: burberry, simple, none")
    map: dict[str, str] = Field(default_factory=dict, description="FIELD=COLUMN over the "
                                "preset (repeat --map)")
    source_split: str | None = Field(None, description="split of a Hugging Face source")
    currency: str = Field("", description="currency when the catalog has none")
    limit: int | None = Field(None, ge=1, description="audit only the first N rows")
    flag_level: float = Field(0.99, ge=0.5, le=0.99, description="a listed price outside "
                              "this interval is flagged")
    faults: Path | None = Field(None, description="known errors (synth's faults.csv) to "
                                "score the audit against")
    fetch: dict[str, Any] = Field(default_factory=dict, description="image fetching, as "
                                  "prepare's fetch: settings (KEY=VALUE, e.g. retries=2)")
    ray: str | None = Field(None, description="run on Ray Data: 'local' (a Ray instance on "
                            "this machine), 'auto' (this machine's cluster) or a cluster "
                            "address (ray://HOST:10001); unset: this process (or torchrun's)")
    ray_actors: int | None = Field(None, ge=1, description="model actors in the Ray pool "
                                   "(default: one per GPU of the cluster, else per CPU)")

    @field_validator("preset", mode="before")
    @classmethod
    def _none_preset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() in ("none", "") else v


__all__ = ["AuditConfig"]
