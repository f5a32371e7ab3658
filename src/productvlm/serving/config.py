"""`productvlm serve`'s settings and the rules about exposure, apart from the app that uses them.

``ServeConfig`` (every limit names itself in the errors it causes) and ``STATIC_DIR`` (the web
page) are read by the app factory (app.py) and the routes (routes.py); keeping them here lets
the routes import them without importing the app.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field

from productvlm.errors import ProductVLMError
from productvlm.inference.options import PredictionOptions

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


class ServeConfig(PredictionOptions):
    """Settings of `productvlm serve`; every limit names itself in the errors it causes.
    Device, precision, engine, answer length and interval level are the prediction options
    every answering command shares (inference/options.py); its batch is ``max_batch``."""

    model: str = Field("", description="run directory or model folder to serve")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    api_key: str | None = Field(None, description="clients must send it as X-API-Key; "
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
    url_timeout_s: float = Field(10.0, gt=0, description="time limit of fetching one URL")
    low_confidence: float = Field(0.5, ge=0, le=1, description="answers under this "
                                  "confidence are marked as low confidence")

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
