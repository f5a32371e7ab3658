"""The FastAPI routes behind `productvlm serve` (imported only when serving: needs [serve]).

A request's life: the body-size guard counts bytes as they arrive (413 before a huge upload
is spooled); the form is parsed with file and field counts capped; each photo is checked and
decoded in a worker thread (uploads.py); the decoded photos go to the micro-batcher, which
runs the shared Predictor; each photo's result, or the reason it was refused, lands in its
own slot of the answer. The whole request runs under ``request_timeout_s``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from productvlm import __version__
from productvlm.answer import DEFAULT_SCHEMA
from productvlm.serving.batcher import MicroBatcher, QueueFullError
from productvlm.serving.config import STATIC_DIR, ServeConfig
from productvlm.serving.results import ErrorBody, api_models, refused, result_of
from productvlm.serving.uploads import ApiError, decode_upload, fetch_url

_ERRORS = {s: {"model": ErrorBody} for s in (401, 408, 413, 415, 422, 503, 504)}
def _multipart_schema(cfg: ServeConfig) -> dict[str, Any]:
    """The OpenAPI request body of /v1/predict (parsed by hand, so declared by hand)."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"},
             "minItems": 1, "maxItems": cfg.max_images,
             "description": "product photos: JPEG, PNG, WebP, GIF or BMP, up to "
             f"{cfg.max_upload_mb:g} MB and {cfg.max_pixels:,} pixels each"}
    props: dict[str, Any] = {"files": files}
    if cfg.allow_urls:
        props["urls"] = {"type": "array", "items": {"type": "string", "format": "uri"},
                         "description": "public image URLs, instead of or beside files"}
    body = {"type": "object", "properties": props, "additionalProperties": False}
    if not cfg.allow_urls:
        body["required"] = ["files"]
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": body}}}}


class BodyLimit:
    """Pure ASGI guard: 413 as soon as a request body passes ``max_bytes`` (or says it will)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = ApiError(413, f"the request is over {self.max_bytes / 1e6:.0f} MB "
                           "(max_images x max_upload_mb)", "max_request")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse(too_big.to_dict(), status_code=413,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise too_big
            return message

        await self.app(scope, counting_receive, send)


def model_summary(predictor: Any, cfg: ServeConfig) -> dict[str, Any]:
    """What /v1/model shows: the model, its adapter, how it answers, the server's limits."""
    describe = getattr(predictor, "describe", None)
    info: dict[str, Any] = dict(describe()) if callable(describe) else {}
    for key in ("model_path", "adapter", "target_format", "question", "max_new_tokens",
                "batch_size", "constrained"):
        if key not in info and getattr(predictor, key, None) is not None:
            info[key] = getattr(predictor, key)
    cats = getattr(predictor, "categories", None)
    if cats is not None and "categories" not in info:
        info["categories"] = list(cats)
    info = {k: (str(v) if not isinstance(v, (int, float, bool, list, dict)) else v)
            for k, v in info.items() if v is not None}
    info.setdefault("model", cfg.model or str(info.get("model_path", "")))
    limits = cfg.model_dump(include={
        "max_batch", "max_wait_ms", "max_queue", "max_images", "max_upload_mb", "max_pixels",
        "request_timeout_s", "allow_urls"})
    return {"productvlm": __version__, **info, "limits": limits,
            "api_key_required": cfg.api_key is not None}


def build_app(predictor: Any, cfg: ServeConfig) -> FastAPI:
    """The FastAPI app over ``predictor``; :func:`productvlm.serving.app.create_app` is the
    entry point that reports a missing [serve] extra."""
    batcher = MicroBatcher(predictor.predict, max_batch=cfg.max_batch,
                           max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue)
    summary = model_summary(predictor, cfg)
    # the answer's JSON: the record's fields and the model's answer fields
    result, response = api_models(getattr(predictor, "schema", DEFAULT_SCHEMA))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="productvlm", version=__version__, lifespan=lifespan,
                  description="Read a product photo: title, category and price.")
    app.state.batcher, app.state.settings = batcher, cfg
    app.add_middleware(BodyLimit, max_bytes=cfg.max_upload_bytes * cfg.max_images + 1_000_000)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = ErrorBody(error=str(exc.detail), status=exc.status_code)
        return JSONResponse(body.model_dump(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        body = ErrorBody(error=f"{where}: {first.get('msg', 'invalid request')}", status=422)
        return JSONResponse(body.model_dump(), status_code=422)

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send it in the X-API-Key header",
                           "api_key")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: answers even while a batch is generating."""
        return {"status": "ok", "queued": batcher.pending, "batches": batcher.stats.batches}

    @app.get("/v1/model", responses={401: _ERRORS[401]})
    async def model_info(request: Request) -> dict[str, Any]:
        """The served model, its adapter and answer settings, and the server's limits."""
        check_key(request)
        stats = batcher.stats
        return {**summary, "batching": {"batches": stats.batches, "images": stats.images,
                                        "mean_batch": round(stats.mean_batch, 2),
                                        "largest_batch": stats.largest_batch}}

    @app.post("/v1/predict", response_model=response, openapi_extra=_multipart_schema(cfg),
              responses=_ERRORS)
    async def predict(request: Request) -> Any:
        """Title, category and price for each photo, in the order they were sent."""
        check_key(request)
        started = time.perf_counter()
        reading = True
        try:
            async with asyncio.timeout(cfg.request_timeout_s):
                uploads = await _read_form(request, cfg)
                reading = False
                results = await _predict_all(uploads, cfg, batcher, result)
        except TimeoutError:
            if reading:
                raise ApiError(408, f"the upload took longer than {cfg.request_timeout_s:g} s",
                               "request_timeout_s") from None
            raise ApiError(504, f"no answer within {cfg.request_timeout_s:g} s; try fewer "
                           "photos or later", "request_timeout_s") from None
        body = response(model=summary["model"], results=results,
                               elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
        if all(not r.ok and r.status != 200 for r in results):
            first = results[0]  # nothing was predicted: the request failed as its first photo
            return JSONResponse({**ErrorBody(error=first.error or "", limit=first.limit,
                                             status=first.status).model_dump(),
                                 "results": [r.model_dump() for r in results]},
                                status_code=first.status)
        return body

    return app


async def _read_form(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes | str]]:
    """The request's photos as ``(name, bytes)`` and URLs as ``(url, url)``, in order."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(422, "send the photos as multipart/form-data in the field 'files' "
                       "(curl -F files=@photo.jpg URL)", "form")
    try:
        form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_images + 4)
    except StarletteHTTPException as e:
        if "Too many" in str(e.detail):
            raise ApiError(413, f"more than {cfg.max_images} photos or fields in one request",
                           "max_images") from None
        raise ApiError(422, f"the form could not be read ({e.detail})", "form") from None
    items: list[tuple[str, bytes | str]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in ("files", "file"):
                    raise ApiError(422, f"unexpected file field {key!r}: send photos in the "
                                   "field 'files'", "form")
                items.append((value.filename or f"photo {len(items) + 1}", await value.read()))
            elif key in ("urls", "url"):
                if not cfg.allow_urls:
                    raise ApiError(422, "this server does not fetch URLs: upload the photo "
                                   "itself (or start it with --allow-urls)", "allow_urls")
                items.append((value.strip(), value.strip()))
            elif key in ("files", "file"):
                raise ApiError(422, f"field {key!r} holds text, not a file: attach the photo "
                               "(curl -F files=@photo.jpg)", "form")
            else:
                raise ApiError(422, f"unexpected field {key!r}: send photos in the field "
                               "'files'", "form")
    finally:
        await form.close()
    if not items:
        raise ApiError(422, "no photo in the request: send one or more in the field 'files'",
                       "form")
    if len(items) > cfg.max_images:
        raise ApiError(413, f"{len(items)} photos is over the {cfg.max_images} a request limit",
                       "max_images")
    return items


async def _decode(name: str, data: bytes | str, cfg: ServeConfig) -> Any:
    if isinstance(data, str):
        data = await fetch_url(data, max_bytes=cfg.max_upload_bytes, timeout_s=cfg.url_timeout_s)
    # decoding a large photo takes tens of ms: off the event loop
    return await asyncio.to_thread(decode_upload, data, name, max_bytes=cfg.max_upload_bytes,
                                   max_pixels=cfg.max_pixels)


async def _predict_all(items: list[tuple[str, bytes | str]], cfg: ServeConfig,
                       batcher: MicroBatcher, result: type[BaseModel]) -> list[Any]:
    decoded = await asyncio.gather(*(_decode(n, d, cfg) for n, d in items),
                                   return_exceptions=True)
    for d in decoded:
        if isinstance(d, BaseException) and not isinstance(d, ApiError):
            raise d
    good = [i for i, d in enumerate(decoded) if not isinstance(d, ApiError)]
    await batcher.start()  # no-op once the lifespan started it; ASGI hosts without lifespan
    try:
        preds = await batcher.submit([decoded[i] for i in good]) if good else []
    except QueueFullError as e:
        raise ApiError(503, f"the server is busy ({e}); retry in a moment", "max_queue") from None
    by_index = dict(zip(good, preds, strict=True))
    return [result_of(result, i, items[i][0], by_index[i]) if i in by_index
            else refused(result, i, items[i][0], decoded[i].message, decoded[i].limit,
                         decoded[i].status) for i in range(len(items))]
