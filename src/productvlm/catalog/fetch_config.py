"""How images are fetched: the ``fetch:`` part of `productvlm prepare`'s config (also used by
predict and audit for URLs). Read by the orchestration (fetch.py) and the network half
(fetch_http.py) alike, so it lives apart from both.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from productvlm import __version__
from productvlm.config import StageConfig
from productvlm.images import DEFAULT_MAX_PIXELS


class FetchConfig(StageConfig):
    """How ``prepare`` fetches images (the ``fetch:`` part of its config)."""

    concurrency: int = Field(64, ge=1, description="requests in flight overall")
    per_host: int = Field(16, ge=1, description="requests in flight to one host (politeness)")
    timeout_s: float = Field(
        20.0, gt=0, description="deadline per attempt: connect, headers and body together"
    )
    retries: int = Field(
        4, ge=0, description="extra attempts after timeouts, connection errors, 408, 429, 5xx"
    )
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles, with jitter")
    retry_after_cap_s: float = Field(60.0, ge=0, description="longest Retry-After honoured (s)")
    max_bytes: int = Field(20_000_000, ge=1, description="larger images fail; reading stops there")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decompression-bomb guard (w*h)")
    local_root: Path | None = Field(
        None, description="local paths and file:// URLs are read only inside it (prepare and "
        "audit: the catalog's folder unless set; elsewhere unset: refused)")
    cache_dir: Path | None = Field(
        None, description="content cache, so reruns and resumed runs download nothing twice "
        "(prepare and audit: OUT/image-cache unless set)")
    window: int = Field(
        0, ge=0, description="sources admitted but not yet yielded; 0 = max(4*concurrency, 256)"
    )
    user_agent: str = Field(f"productvlm/{__version__} (image fetch)", description="User-Agent")
