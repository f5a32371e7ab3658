"""The network half of image fetching: what a source is, and one polite, bounded download.

Kept apart from ``fetch.py`` (orchestration) so the retry and size rules read in one place.

The client is aiohttp: its C parser and lean pool cost ~0.5 ms of CPU per request, where
httpx/httpx2 cost ~2.7 ms, and on a 2-core machine that CPU, not the network, is what limits a
fetch (3,040 downloads at 50 ms latency from bench/bench_fetch.py's server, no decoding:
8.3 s and 8.6 s of CPU with httpx2, 3.5 s and 1.4 s of CPU with aiohttp).
"""

from __future__ import annotations

import asyncio
import random
import re
import urllib.request
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from yarl import URL

from productvlm.catalog.fetch_config import FetchConfig

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
            url = URL(text)
        except ValueError as e:
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


class HttpSession:
    """The aiohttp session every download of one fetch shares (one pool, keep-alive).

    >>> async with HttpSession(cfg) as http:  # doctest: +SKIP
    ...     data = await download(http, url, cfg, host_slots, overall_slots)
    """

    def __init__(self, cfg: FetchConfig) -> None:
        self.cfg = cfg
        self.session: aiohttp.ClientSession | None = None
        self.proxies: dict[str, str] = {}

    async def __aenter__(self) -> HttpSession:
        cfg = self.cfg
        self.session = aiohttp.ClientSession(
            # our semaphores bound requests per host; the connector bounds sockets overall
            connector=aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=0),
            # the whole attempt is under asyncio.timeout in download(); this is a backstop
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_s),
            headers={"User-Agent": cfg.user_agent},
            # trust_env would re-read ~/.netrc and the proxy variables in a thread on every
            # request (most of the fetch's CPU); the proxies are read once, in proxy_for.
            trust_env=False,
        )
        self.proxies = urllib.request.getproxies_environment()
        return self

    def proxy_for(self, url: str) -> str | None:
        """The HTTP(S)_PROXY for ``url``, unless NO_PROXY exempts its host (as curl does)."""
        if not self.proxies:
            return None
        parts = urlsplit(url)
        if urllib.request.proxy_bypass_environment(parts.hostname or "", self.proxies):
            return None
        return self.proxies.get(parts.scheme)

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()


async def download(
    http: HttpSession,
    url: str,
    cfg: FetchConfig,
    host_slots: asyncio.Semaphore,
    overall_slots: asyncio.Semaphore,
) -> bytes:
    """GET ``url`` with retries; slots are held only while a request is on the wire."""
    assert http.session is not None, "use HttpSession as an async context manager"
    last = "no attempt"
    for attempt in range(cfg.retries + 1):
        wait = None
        # Host first: a request queued behind a busy host must not sit on an overall slot.
        async with host_slots, overall_slots:
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    return await _get_once(http.session, url, cfg, http.proxy_for(url))
            except _Retry as r:
                last, wait = r.reason, r.wait
            except TimeoutError:  # asyncio's, and aiohttp's socket/connect timeouts
                last = "timeout"
            except aiohttp.NonHttpUrlRedirectClientError as e:  # e.g. a redirect to ftp://
                raise Fail(f"unsupported redirect ({e})", permanent=True) from None
            except aiohttp.TooManyRedirects:
                raise Fail("too many redirects", permanent=True) from None
            except aiohttp.ClientPayloadError as e:
                if "encoding" in str(e).lower():
                    raise Fail("corrupt content-encoding", permanent=True) from None
                last = f"connection failed ({type(e).__name__})"  # body cut short
            except aiohttp.ClientConnectionError as e:
                last = f"connection failed ({type(e).__name__})"
            except (aiohttp.ClientError, ValueError) as e:  # anything else odd from a server
                raise Fail(f"request failed ({type(e).__name__}: {e})") from None
        if attempt < cfg.retries:
            if wait is None:
                wait = backoff_seconds(attempt, cfg.backoff_s, cfg.retry_after_cap_s)
            await asyncio.sleep(wait)
    raise Fail(f"{last} after {cfg.retries} retries")


async def _get_once(
    session: aiohttp.ClientSession, url: str, cfg: FetchConfig, proxy: str | None
) -> bytes:
    async with session.get(url, allow_redirects=True, max_redirects=10, proxy=proxy) as r:
        code = r.status
        if code in (408, 429) or code >= 500:
            raise _Retry(
                f"http {code}",
                retry_after_seconds(r.headers.get("Retry-After"), cfg.retry_after_cap_s),
            )
        if not 200 <= code < 300:
            raise Fail(f"http {code}", permanent=True)
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype.startswith(_NOT_IMAGE_TYPES):
            raise Fail(f"not an image ({ctype})", permanent=True)
        too_large = Fail(f"too large (> {cfg.max_bytes} bytes)")
        length = r.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cfg.max_bytes:
            raise too_large
        body = bytearray()
        # Decoded bytes (after gzip), so the cap also stops a compression bomb.
        async for chunk in r.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > cfg.max_bytes:
                raise too_large
        return bytes(body)
