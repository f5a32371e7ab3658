"""`productvlm serve`'s settings and the rules about exposure, apart from the app that uses them.

``ServeConfig`` (every limit names itself in the errors it causes) and ``STATIC_DIR`` (the web
page) are read by the app factory (app.py) and the routes (routes.py); keeping them here lets
the routes import them without importing the app.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field

from productvlm.config import HubKernels, StageConfig
from productvlm.errors import ProductVLMError
from productvlm.inference.vllm_engine import ENGINE_HELP, Engine

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


class ServeConfig(StageConfig):
    """Settings of `productvlm serve`; every limit names itself in the errors it causes."""

    model: str = Field("", description="run directory or model folder to serve")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="required in X-API-Key when set; "
                                "mandatory when binding a non-loopback address")
    max_batch: int = Field(8, ge=1, le=256, description="photos per batched generation; "
                           "1 turns micro-batching off")
    max_wait_ms: float = Field(10.0, ge=0, le=1000, description="how long a batch waits for "
                               "more photos")
    max_queue: int = Field(64, ge=1, description="photos waiting beyond this get 503")
    max_images: int = Field(8, ge=1, le=64, description="photos per request")
    max_upload_mb: float = Field(10.0, gt=0, description="size limit of one photo")
    max_pixels: int = Field(40_000_000, ge=1, description="width x height limit of one photo "
                            "(decompression bombs)")
    request_timeout_s: float = Field(120.0, gt=0, description="whole-request time limit")
    allow_urls: bool = Field(False, description="accept image URLs in field 'urls'; never "
                             "fetched from loopback, private or link-local addresses")
    url_timeout_s: float = Field(10.0, gt=0)
    max_new_tokens: int | None = Field(None, ge=1, description="override the run's setting")
    engine: Engine = Field("hf", description=ENGINE_HELP)
    interval_level: float = Field(0.8, ge=0.5, le=0.99, description="level of the price "
                                  "intervals (calibrated models)")
    low_confidence: float = Field(0.5, ge=0, le=1, description="answers under this "
                                  "confidence are marked as low confidence")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on a CUDA GPU that has it, else fp32")
    hub_kernels: HubKernels = False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: ServeConfig) -> None:
    """Refuse to serve a model to the network without an API key."""
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise ProductVLMError(
            f"--host {cfg.host}: binding beyond this machine needs --api-key (or the "
            "PRODUCTVLM_API_KEY environment variable); clients send it as X-API-Key"
        )
