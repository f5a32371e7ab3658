"""`productvlm serve`: an HTTP API and a web page over the one prediction path.

Usage:
    productvlm serve --model runs/demo                       # http://127.0.0.1:8000
    curl -F files=@bag.jpg -F files=@coat.png http://127.0.0.1:8000/v1/predict
    productvlm serve --model runs/burberry --host 0.0.0.0 --api-key "$KEY"

Routes: ``POST /v1/predict`` (multipart photos, field ``files``; one JSON result per photo,
in order, a refused photo's error in its own slot), ``GET /healthz``, ``GET /v1/model``,
``/openapi.json`` and the web page at ``/``. Concurrent requests' photos are micro-batched
(serving/batcher.py); generation runs in a worker thread so the event loop stays free.

FastAPI and uvicorn are the ``[serve]`` extra: they are imported inside functions, so
``productvlm --help`` works without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from productvlm.config import hub_kernels_option, resolve_config
from productvlm.errors import ProductVLMError
from productvlm.inference.vllm_engine import ENGINE_HELP
from productvlm.serving.config import ServeConfig, check_exposure, is_loopback


def create_app(predictor: Any, settings: ServeConfig | None = None) -> Any:
    """The FastAPI app serving ``predictor`` (an :class:`productvlm.inference.Predictor`).

    >>> from fastapi.testclient import TestClient  # doctest: +SKIP
    >>> with TestClient(create_app(predictor, ServeConfig(max_batch=4))) as client:
    ...     client.post("/v1/predict", files={"files": open("bag.jpg", "rb")}).json()
    """
    try:
        from productvlm.serving.routes import build_app
    except ModuleNotFoundError as e:
        if e.name in ("fastapi", "starlette", "multipart", "python_multipart"):
            raise ProductVLMError(
                f"serving needs the [serve] extra ({e.name} is missing): "
                "pip install 'productvlm[serve]'"
            ) from None
        raise
    return build_app(predictor, settings or ServeConfig())


def load_predictor(cfg: ServeConfig) -> Any:
    """Load the run's model through the one prediction path, batched to ``max_batch``."""
    from productvlm.inference.vllm_engine import load_engine

    kwargs: dict[str, Any] = {"batch_size": cfg.max_batch, "device": cfg.device,
                              "precision": cfg.precision, "hub_kernels": cfg.hub_kernels,
                              "interval_level": cfg.interval_level,
                              "low_confidence": cfg.low_confidence}
    if cfg.max_new_tokens is not None:
        kwargs["max_new_tokens"] = cfg.max_new_tokens
    return load_engine(cfg.engine, cfg.model, **kwargs)


def serve(cfg: ServeConfig) -> None:
    """Load the model and run uvicorn until interrupted."""
    if not cfg.model:
        raise ProductVLMError("--model: name the run directory or model folder to serve")
    check_exposure(cfg)
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise ProductVLMError(
            "serving needs the [serve] extra (uvicorn is missing): pip install 'productvlm[serve]'"
        ) from None
    app = create_app(load_predictor(cfg), cfg)
    shown = "localhost" if is_loopback(cfg.host) else cfg.host
    typer.echo(f"serving {cfg.model} on http://{shown}:{cfg.port}/ (Ctrl+C to stop)")
    # keep-alive short and a bounded backlog: idle or slow clients cannot pin connections
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                timeout_keep_alive=5, backlog=256, limit_concurrency=1024)


def register(app: typer.Typer) -> None:
    """Add the `serve` command."""

    @app.command("serve")
    def serve_command(
        model: str | None = typer.Option(None, "--model", "-m", help="run directory or model"),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML (section serve:)"),
        host: str | None = typer.Option(None, help="address to bind [127.0.0.1]"),
        port: int | None = typer.Option(None, help="port [8000]"),
        api_key: str | None = typer.Option(None, envvar="PRODUCTVLM_API_KEY",
                                           help="clients must send it as X-API-Key"),
        max_batch: int | None = typer.Option(None, help="photos per batch; 1 = no batching [8]"),
        engine: str | None = typer.Option(None, help=f"{ENGINE_HELP} [hf]"),
        max_wait_ms: float | None = typer.Option(None, help="batch gathering window [10]"),
        max_queue: int | None = typer.Option(None, help="waiting photos before 503 [64]"),
        max_images: int | None = typer.Option(None, help="photos per request [8]"),
        max_upload_mb: float | None = typer.Option(None, help="size limit per photo [10]"),
        max_pixels: int | None = typer.Option(None, help="pixel limit per photo [40e6]"),
        request_timeout_s: float | None = typer.Option(None, help="request time limit [120]"),
        allow_urls: bool = typer.Option(False, "--allow-urls",
                                        help="accept public image URLs in field 'urls'"),
        max_new_tokens: int | None = typer.Option(None, help="override the run's setting"),
        device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1 [auto]"),
        precision: str | None = typer.Option(None, help="auto, bf16, fp16, fp32 [auto]"),
        hub_kernels: bool | None = hub_kernels_option(),
        interval_level: float | None = typer.Option(None, help="price interval level [0.8]"),
        low_confidence: float | None = typer.Option(None, help="mark answers under this "
                                                    "confidence [0.5]"),
    ) -> None:
        """Serve the model: HTTP API (POST /v1/predict) and a web page at /."""
        flags = dict(
            model=model, host=host, port=port, api_key=api_key, max_batch=max_batch,
            engine=engine,
            max_wait_ms=max_wait_ms, max_queue=max_queue, max_images=max_images,
            max_upload_mb=max_upload_mb, max_pixels=max_pixels,
            request_timeout_s=request_timeout_s, allow_urls=allow_urls or None,
            max_new_tokens=max_new_tokens, device=device, precision=precision,
            hub_kernels=hub_kernels, interval_level=interval_level,
            low_confidence=low_confidence,
        )
        serve(resolve_config(ServeConfig, config, flags, section="serve"))
