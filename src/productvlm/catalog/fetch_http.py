"""The network half of image fetching: what a source is, and one polite, bounded download.

Kept apart from ``fetch.py`` (orchestration) so the retry and size rules read in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx2 as httpx

if TYPE_CHECKING:
    from productvlm.catalog.fetch import FetchConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Content types that are never an image, whatever the bytes: error pages, JSON, XML.
_NOT_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")


class Fail(Exception):
    """A source that yields no image; ``permanent`` when a retry would not change that."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def classify_source(source: Any) -> tuple[str, Any]:
    """``("http", url)`` or ``("file", Path)``; raises Fail for anything else.

    A bare word like ``N.A.`` is not taken for a file name: paths need a separator or an
    image suffix.

    >>> classify_source("https://x.com/a.jpg")
    ('http', 'https://x.com/a.jpg')
    >>> classify_source("file:///srv/img/a%20b.jpg")
    ('file', PosixPath('/srv/img/a b.jpg'))
    """
    if not isinstance(source, str) or not source.strip():
        raise Fail(f"not a URL or path: {source!r}")
    text = source.strip()
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as e:
            raise Fail(f"invalid URL ({e})") from None
        if not url.host:
            raise Fail(f"invalid URL (no host): {text!r}")
        return "http", text
    if lower.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise Fail(f"file URL on another host ({parts.netloc}) refused")
        return "file", Path(unquote(parts.path))
    if _SCHEME.match(text):
        raise Fail(f"unsupported URL scheme {text.split(':', 1)[0]!r}")
    path = Path(text)
    if "/" in text or "\\" in text or text.startswith("~") or path.suffix.lower() in IMAGE_SUFFIXES:
        return "file", path
    raise Fail(f"not a URL or path: {source!r}")


def retry_after_seconds(value: str | None, cap: float, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), capped.

    >>> retry_after_seconds("3", cap=60)
    3.0
    >>> now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    >>> retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", 60, now)
    10.0
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: ``base * 2**attempt``, randomly halved at most."""
    delay = min(base * 2**attempt, cap)
    return delay / 2 + random.uniform(0, delay / 2)


class ClientPools:
    """A few small httpx2 clients used as one, each request on the least busy.

    httpcore's pool walks every connection it holds (a poll() and getpeername() each) on
    every request and release, so one pool of 64 connections spends about twice the CPU per
    request of 8 pools of 8, and that CPU is what caps a fetch on a small machine.
    """

    POOL = 8  # connections per client

    def __init__(self, cfg: FetchConfig) -> None:
        n = -(-cfg.concurrency // self.POOL)
        size = -(-cfg.concurrency // n)
        ssl_context = httpx.create_ssl_context()  # one for all: each costs ~50 ms to build
        self.clients = [
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                timeout=httpx.Timeout(cfg.timeout_s),
                follow_redirects=True,
                headers={"User-Agent": cfg.user_agent},
                verify=ssl_context,
            )
            for _ in range(n)
        ]
        self.busy = [0] * n

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client with a free connection (callers hold one of ``concurrency`` slots)."""
        i = min(range(len(self.busy)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            yield self.clients[i]
        finally:
            self.busy[i] -= 1

    async def __aenter__(self) -> ClientPools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.aclose()


async def download(
    pools: ClientPools,
    url: str,
    cfg: FetchConfig,
    host_slots: asyncio.Semaphore,
    overall_slots: asyncio.Semaphore,
) -> bytes:
    """GET ``url`` with retries; slots are held only while a request is on the wire."""
    last = "no attempt"
    for attempt in range(cfg.retries + 1):
        wait = None
        # Host first: a request queued behind a busy host must not sit on an overall slot.
        async with host_slots, overall_slots:
            try:
                async with asyncio.timeout(cfg.timeout_s), pools.lease() as client:
                    return await _get_once(client, url, cfg)
            except _Retry as r:
                last, wait = r.reason, r.wait
            except (TimeoutError, httpx.TimeoutException):
                last = "timeout"
            except httpx.UnsupportedProtocol as e:  # e.g. a redirect to ftp://
                raise Fail(f"unsupported redirect ({e})", permanent=True) from None
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__})"
            except httpx.TooManyRedirects:
                raise Fail("too many redirects", permanent=True) from None
            except httpx.DecodingError:
                raise Fail("corrupt content-encoding", permanent=True) from None
            except (httpx.HTTPError, httpx.InvalidURL) as e:  # anything else odd from a server
                raise Fail(f"request failed ({type(e).__name__}: {e})") from None
        if attempt < cfg.retries:
            if wait is None:
                wait = backoff_seconds(attempt, cfg.backoff_s, cfg.retry_after_cap_s)
            await asyncio.sleep(wait)
    raise Fail(f"{last} after {cfg.retries} retries")


async def _get_once(client: httpx.AsyncClient, url: str, cfg: FetchConfig) -> bytes:
    async with client.stream("GET", url) as r:
        code = r.status_code
        if code in (408, 429) or code >= 500:
            raise _Retry(
                f"http {code}",
                retry_after_seconds(r.headers.get("retry-after"), cfg.retry_after_cap_s),
            )
        if not 200 <= code < 300:
            raise Fail(f"http {code}", permanent=True)
        ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith(_NOT_IMAGE_TYPES):
            raise Fail(f"not an image ({ctype})", permanent=True)
        too_large = Fail(f"too large (> {cfg.max_bytes} bytes)")
        length = r.headers.get("content-length", "")
        if length.isdigit() and int(length) > cfg.max_bytes:
            raise too_large
        body = bytearray()
        # Decoded bytes (after gzip), so the cap also stops a compression bomb.
        async for chunk in r.aiter_bytes():
            body += chunk
            if len(body) > cfg.max_bytes:
                raise too_large
        return bytes(body)
