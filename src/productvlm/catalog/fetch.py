"""Fetch catalog images: concurrent, polite, validated, cached, resumable.

``fetch_images(sources, cfg)`` turns a stream of image URLs or paths into ``FetchResult``s
in input order. An asyncio loop in a background thread downloads (aiohttp, bounded overall and
per host, retries with backoff on timeouts/429/5xx honouring Retry-After, streamed with a size
cap), a thread pool sized to the cores validates and normalises the bytes (Pillow releases the
GIL while decoding), and the caller's thread reorders results and draws the progress bar.
At most ``window`` sources are between admission and being yielded, so a 20,000-image
catalog streams through in bounded memory. With ``cache_dir`` every outcome worth keeping is
appended to the cache as soon as it is known, so a rerun, or a run resumed after ``kill -9``,
downloads nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarl import URL

from productvlm.catalog.fetch_cache import FetchCache
from productvlm.catalog.fetch_config import FetchConfig
from productvlm.catalog.fetch_http import Fail, HttpSession, classify_source, download
from productvlm.errors import ProductVLMError
from productvlm.images import ImageRejected, normalize_image_bytes

__all__ = ["FetchConfig", "FetchResult", "fetch_images", "read_local"]


@dataclass
class FetchResult:
    """The outcome for one source; ``data`` is upright RGB image bytes ready to store."""

    source: str  # the URL or path as given
    ok: bool
    data: bytes | None = None
    sha256: str | None = None  # of data: exact duplicate images go to one split
    width: int | None = None
    height: int | None = None
    error: str | None = None  # short reason, e.g. "http 404", "truncated image"
    cached: bool = False  # served from the cache: nothing was downloaded


_DONE = object()


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _open_places(cfg: FetchConfig) -> tuple[FetchCache | None, Path | None]:
    """The cache and the resolved local root, with a clear error when either is unusable."""
    cache = root = None
    if cfg.cache_dir is not None:
        try:
            cache = FetchCache(cfg.cache_dir.expanduser())
        except OSError as e:
            raise ProductVLMError(
                f"cache_dir {cfg.cache_dir}: cannot use it ({e.strerror or e}); "
                "pick a writable folder"
            ) from None
    if cfg.local_root is not None:
        root = cfg.local_root.expanduser().resolve()
        if not root.is_dir():
            raise ProductVLMError(
                f"local_root {cfg.local_root}: not a folder; name the folder the images are in"
            )
    return cache, root


class _Fetcher:
    """The background half: an event loop thread feeding ``out`` with ``(index, result)``."""

    def __init__(
        self, cfg: FetchConfig, out: queue.Queue, places: tuple[FetchCache | None, Path | None]
    ) -> None:
        self.cfg = cfg
        self.out = out
        self.cache, self.root = places
        self.window = cfg.window or max(4 * cfg.concurrency, 256)
        self.pool = ThreadPoolExecutor(_cores(), thread_name_prefix="productvlm-image")
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task | None = None
        self.stopping = False

    # -- called from the consumer's thread -------------------------------------------------
    def run(self, sources: Iterator[Any]) -> None:
        try:
            self.task = self.loop.create_task(self._main(sources))
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseExceptionGroup as group:  # the TaskGroup wraps what `sources` raised
            self.out.put(group.exceptions[0] if len(group.exceptions) == 1 else group)
        except BaseException as e:  # surfaces in the consumer's thread, e.g. a bad iterable
            self.out.put(e)
        finally:
            self.out.put(_DONE)
            self.loop.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            if self.cache is not None:
                self.cache.close()

    def release(self) -> None:
        """One result left the reorder buffer: admit one more source."""
        self._call(lambda: self.slots.release())

    def stop(self) -> None:
        self.stopping = True
        self._call(lambda: self.task and self.task.cancel())

    def _call(self, fn: Any) -> None:
        # RuntimeError: the loop is already closed, nothing is left to admit or cancel
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn)

    # -- the event loop ---------------------------------------------------------------------
    async def _main(self, sources: Iterator[Any]) -> None:
        cfg = self.cfg
        self.slots = asyncio.Semaphore(self.window)
        self.overall = asyncio.Semaphore(cfg.concurrency)
        self.hosts: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(cfg.per_host)
        )
        self.inflight: dict[str, asyncio.Task] = {}
        async with HttpSession(cfg) as self.http, asyncio.TaskGroup() as tg:
            for index, source in enumerate(sources):
                await self.slots.acquire()
                if self.stopping:
                    break
                tg.create_task(self._emit(index, source))

    async def _emit(self, index: int, source: Any) -> None:
        # The same URL twice in flight (duplicate products share photos) is fetched once.
        key = source.strip() if isinstance(source, str) else None
        task = self.inflight.get(key) if key else None
        if task is None:
            task = asyncio.ensure_future(self._fetch_one(source))
            if key:
                self.inflight[key] = task
                task.add_done_callback(lambda _t: self.inflight.pop(key, None))
        result = await task
        if result.source is not source:
            result = dataclasses.replace(result, source=source)
        self.out.put((index, result))

    async def _fetch_one(self, source: Any) -> FetchResult:
        kind = None
        try:
            kind, target = classify_source(source)
            if kind == "file":
                return await self._in_pool(self._local, source, target)
            # A miss is one index lookup here, so requests still reach the network in source
            # order (results are yielded in that order); hits are read in the pool.
            if self.cache is not None and self.cache.has(source.strip()):
                hit = await self._in_pool(self._cached, source.strip())
                if hit is not None:
                    return dataclasses.replace(hit, source=source)
            sem = self.hosts[URL(target).host or ""]
            raw = await download(self.http, target, self.cfg, sem, self.overall)
            return await self._in_pool(self._finish, source, raw, True)
        except Fail as f:
            # Remember answers that a retry would not change (404, HTML page) so a rerun does
            # not ask again; timeouts and 5xx are tried afresh next run.
            if f.permanent and kind == "http" and self.cache is not None:
                entry = {"ok": False, "error": f.reason}
                await self._in_pool(self.cache.put, source.strip(), entry, None)
            return FetchResult(source, ok=False, error=f.reason)

    def _in_pool(self, fn: Any, *args: Any) -> asyncio.Future:
        return self.loop.run_in_executor(self.pool, fn, *args)

    # -- worker threads ---------------------------------------------------------------------
    def _cached(self, key: str) -> FetchResult | None:
        assert self.cache is not None
        entry = self.cache.get(key)
        if entry is None:
            return None
        meta, data = entry
        if not meta.get("ok"):
            return FetchResult(key, ok=False, error=str(meta.get("error")), cached=True)
        width, height = meta.get("width"), meta.get("height")
        if not (isinstance(width, int) and isinstance(height, int)):
            return None  # not an entry we wrote: fetch again
        return FetchResult(key, True, data, meta["sha256"], width, height, cached=True)

    def _local(self, source: str, path: Path) -> FetchResult:
        return self._finish(source, read_local(path, self.root, self.cfg.max_bytes), False)

    def _finish(self, source: str, raw: bytes, cacheable: bool) -> FetchResult:
        """Validate/normalise downloaded bytes and cache the outcome (worker thread)."""
        cache = self.cache if cacheable and isinstance(source, str) else None
        try:
            data, width, height = normalize_image_bytes(raw, self.cfg.max_pixels)
        except ImageRejected as e:
            # A pixel limit is a setting, not a property of the image: don't remember it.
            if cache is not None and not e.reason.startswith("decompression bomb"):
                cache.put(source.strip(), {"ok": False, "error": e.reason}, None)
            return FetchResult(source, ok=False, error=e.reason)
        digest = hashlib.sha256(data).hexdigest()
        if cache is not None:
            meta = {"ok": True, "sha256": digest, "width": width, "height": height}
            cache.put(source.strip(), meta, data)
        return FetchResult(source, True, data, digest, width, height)


def read_local(path: Path, root: Path | None, max_bytes: int) -> bytes:
    """The bytes of a local image file, read once, if the rules allow it; else raises Fail.

    Relative paths are taken inside ``root``; a path that resolves outside it (``..``,
    symlinks) is refused, as is any local file when ``root`` is None.

    >>> read_local(Path("shots/bag.jpg"), Path.cwd(), 20_000_000)  # doctest: +SKIP
    """
    if root is None:
        raise Fail("local file refused (set local_root to allow local images)")
    try:
        full = path.expanduser()
        full = (full if full.is_absolute() else root / full).resolve()
    except (OSError, RuntimeError) as e:  # e.g. a symlink loop
        raise Fail(f"cannot resolve path ({e})") from None
    if not full.is_relative_to(root):  # `..` and symlinks are resolved by now
        raise Fail("outside local root")
    if not full.exists():
        raise Fail("file not found")
    if not full.is_file():
        raise Fail("not a file")
    try:
        if full.stat().st_size > max_bytes:
            raise Fail(f"too large (> {max_bytes} bytes)")
        return full.read_bytes()
    except OSError as e:
        raise Fail(f"cannot read file ({e.strerror or e})") from None


class _Bar:
    """Rich progress on stderr: done / total, ok, failed, cached."""

    def __init__(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        counts = "ok {task.fields[ok]}  failed {task.fields[failed]}  cached {task.fields[cached]}"
        self.progress = Progress(
            TextColumn("fetch images"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(counts),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.counts = {"ok": 0, "failed": 0, "cached": 0}
        self.task = self.progress.add_task("fetch", total=total, **self.counts)
        self.progress.start()

    def advance(self, result: FetchResult) -> None:
        self.counts["ok" if result.ok else "failed"] += 1
        self.counts["cached"] += result.cached
        self.progress.update(self.task, advance=1, **self.counts)

    def close(self) -> None:
        self.progress.stop()


def fetch_images(
    sources: Iterable[Any], cfg: FetchConfig, progress: bool = True
) -> Iterator[FetchResult]:
    """Fetch and validate each source (URL, path or junk); yield one result each, in order.

    Never raises for a bad source: its result has ``ok=False`` and a short ``error``. Errors
    raised by ``sources`` itself propagate. Stopping early (``break``) cancels the rest.

    >>> cfg = FetchConfig(cache_dir=Path("out/.image-cache"))
    >>> for r in fetch_images(["https://example.com/a.jpg", "N.A."], cfg):  # doctest: +SKIP
    ...     print(r.ok, r.error)
    True None
    False not a URL or path: 'N.A.'
    """
    places = _open_places(cfg)  # raise about a bad cache_dir/local_root now, not at next()
    return _results(sources, cfg, places, progress)


def _results(
    sources: Iterable[Any],
    cfg: FetchConfig,
    places: tuple[FetchCache | None, Path | None],
    progress: bool,
) -> Iterator[FetchResult]:
    total = len(sources) if hasattr(sources, "__len__") else None  # type: ignore[arg-type]
    out: queue.Queue = queue.Queue()
    fetcher = _Fetcher(cfg, out, places)
    thread = threading.Thread(
        target=fetcher.run, args=(iter(sources),), name="productvlm-fetch", daemon=True
    )
    bar = _Bar(total) if progress else None
    thread.start()
    pending: dict[int, FetchResult] = {}
    next_index = 0
    try:
        while (item := out.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            index, result = item
            pending[index] = result
            while next_index in pending:
                result = pending.pop(next_index)
                next_index += 1
                fetcher.release()
                if bar is not None:
                    bar.advance(result)
                yield result
    finally:
        fetcher.stop()
        thread.join()
        if bar is not None:
            bar.close()
