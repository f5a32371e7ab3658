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

from typing import Any

import typer

from productvlm.errors import ProductVLMError
from productvlm.options import Flag, config_command
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
    """Add the `serve` command (its options: :class:`ServeConfig`)."""

    @config_command(app, "serve", ServeConfig, section="serve",
                    flags={"model": Flag("--model", "-m"),
                           "api_key": Flag("--api-key", envvar="PRODUCTVLM_API_KEY")})
    def serve_command(cfg: ServeConfig) -> None:
        """Serve the model: HTTP API (POST /v1/predict) and a web page at /."""
        serve(cfg)
