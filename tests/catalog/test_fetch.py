"""Image fetching against a real HTTP server on 127.0.0.1 with scripted per-path behaviours."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from productvlm.catalog.fetch import FetchConfig, FetchResult, fetch_images
from productvlm.catalog.fetch_http import HttpSession, retry_after_seconds
from productvlm.errors import ProductVLMError
from productvlm.images import open_image

ROOT = Path(__file__).resolve().parents[2]


# --- images -------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    """Noisy RGB picture, so JPEGs have a few KB of entropy-coded data to truncate."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def jpeg(seed: int = 0, w: int = 48, h: int = 32) -> bytes:
    return _encode(photo(w, h, seed), quality=90)


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels: the shape of a decompression bomb, minus the payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- server -------------------------------------------------------------------------------
@dataclass
class Resp:
    status: int = 200
    body: bytes = b""
    ctype: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    gate: bool = False  # hold the answer until the test opens the gate
    no_length: bool = False  # body without Content-Length, ended by closing the connection


class Server:
    """ThreadingHTTPServer in a thread; responses per path (the last one repeats), counters."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Resp]] = {}
        self.hits: Counter[str] = Counter()  # requests received
        self.served: Counter[str] = Counter()  # bodies fully written
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.host_inflight: Counter[str] = Counter()
        self.max_host_inflight: Counter[str] = Counter()
        self.gate = threading.Event()
        self.generation = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

        ThreadingHTTPServer.request_queue_size = 128
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_port
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def add(self, path: str, *responses: Resp) -> str:
        self.routes[path] = list(responses)
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path, host = h.path, h.headers.get("Host", "").rsplit(":", 1)[0]
        with self.lock:
            n = self.hits[path]
            self.hits[path] += 1
            self.times[path].append(time.monotonic())
            self.inflight += 1
            self.host_inflight[host] += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.max_host_inflight[host] = max(
                self.max_host_inflight[host], self.host_inflight[host]
            )
            generation = self.generation
        try:
            responses = self.routes.get(path.split("?")[0]) or [Resp(404, b"missing", "text/plain")]
            r = responses[min(n, len(responses) - 1)]
            time.sleep(r.delay)
            if r.gate:
                self.gate.wait()
                if generation != self.generation:  # the client was killed meanwhile
                    h.close_connection = True
                    return
        finally:
            # Counted as in flight only until the answer starts: the client's slot covers
            # all of that, so the observed maximum never overstates its concurrency.
            with self.lock:
                self.inflight -= 1
                self.host_inflight[host] -= 1
        try:
            h.send_response(r.status)
            h.send_header("Content-Type", r.ctype)
            for k, v in r.headers.items():
                h.send_header(k, v)
            if r.no_length:
                h.send_header("Connection", "close")
                h.close_connection = True
            else:
                h.send_header("Content-Length", str(len(r.body)))
            h.end_headers()
            h.wfile.write(r.body)
            h.wfile.flush()
        except OSError:  # the client gave up (timeout test)
            return
        with self.lock:
            self.served[path] += 1

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def cfg(**kw) -> FetchConfig:
    return FetchConfig(**{"backoff_s": 0.01, "timeout_s": 5.0, **kw})


def fetch(sources, config: FetchConfig | None = None) -> list[FetchResult]:
    return list(fetch_images(sources, config or cfg(), progress=False))


# --- outcomes -----------------------------------------------------------------------------
def test_good_jpeg_is_kept_byte_for_byte(server):
    body = jpeg()
    [r] = list(fetch_images([server.add("/a.jpg", Resp(body=body))], cfg(), progress=True))
    assert r.ok and r.error is None and not r.cached
    assert r.data == body and r.sha256 == hashlib.sha256(body).hexdigest()
    assert (r.width, r.height) == (48, 32)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # our guard answers
def test_every_fault_has_its_reason_in_input_order(server):
    big = jpeg(w=200, h=200)
    html = b"<!DOCTYPE html><html><body>Not found</body></html>"
    cases = {
        server.add("/404.jpg", Resp(404, b"nope", "text/plain")): "http 404",
        server.add("/page", Resp(body=html, ctype="text/html; charset=utf-8")): (
            "not an image (text/html)"
        ),
        server.add("/lies.jpg", Resp(body=html)): "not an image (text/html)",
        server.add("/logo.svg", Resp(body=b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.'
                                     b'org/2000/svg"/>', ctype="image/svg+xml")): (
            "not an image (an SVG drawing; convert it to PNG or JPEG)"
        ),
        server.add("/cut.jpg", Resp(body=jpeg()[:-400])): "truncated image",
        server.add("/junk.jpg", Resp(body=os.urandom(3000))): "not an image (",
        server.add("/big.jpg", Resp(body=big)): "too large (> 5000 bytes)",
        server.add("/big-stream.jpg", Resp(body=big, no_length=True)): "too large (> 5000 bytes)",
        server.add("/bomb.png", Resp(body=png_header(10_000, 10_000), ctype="image/png")): (
            "decompression bomb (10000x10000 pixels > 89478485)"
        ),
        server.add("/huge.png", Resp(body=png_header(20_000, 20_000), ctype="image/png")): (
            "decompression bomb ("
        ),
        "N.A.": "not a URL or path: 'N.A.'",
        "": "not a URL or path: ''",
        "ftp://example.com/a.jpg": "unsupported URL scheme 'ftp'",
        server.add("/ok.jpg", Resp(body=jpeg())): None,
    }
    results = fetch(list(cases), cfg(max_bytes=5000))
    assert [r.source for r in results] == list(cases)
    for r, expected in zip(results, cases.values(), strict=True):
        if expected is None:
            assert r.ok, r
        else:
            assert not r.ok and r.data is None and r.error.startswith(expected), (r.source, r.error)
    assert server.served["/big-stream.jpg"] == 1  # the cap stopped reading, not the server


def test_pixel_limit_is_configurable(server):
    [r] = fetch([server.add("/a.jpg", Resp(body=jpeg()))], cfg(max_pixels=1000))
    assert r.error == "decompression bomb (48x32 pixels > 1000)"


def test_exif_rotated_jpeg_comes_out_upright(server):
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # stored: left half red, right half blue
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 CW to display": left edge becomes top
    [r] = fetch([server.add("/rot.jpg", Resp(body=_encode(img, exif=exif.tobytes())))])
    assert r.ok and (r.width, r.height) == (40, 60)
    out = Image.open(io.BytesIO(r.data))
    assert out.size == (40, 60) and out.mode == "RGB"
    assert out.getexif().get(ExifTags.Base.Orientation, 1) == 1
    top, bottom = out.getpixel((20, 5)), out.getpixel((20, 55))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_cmyk_rgba_and_palette_become_rgb(server):
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    rgba.paste((10, 200, 10, 255), (0, 0, 10, 10))
    sources = [
        server.add("/cmyk.jpg", Resp(body=_encode(photo().convert("CMYK")))),
        server.add("/rgba.png", Resp(body=_encode(rgba, "PNG"), ctype="image/png")),
        server.add("/p.gif", Resp(body=_encode(photo().convert("P"), "GIF"), ctype="image/gif")),
    ]
    cmyk, clear, pal = fetch(sources)
    for r in (cmyk, clear, pal):
        assert r.ok and Image.open(io.BytesIO(r.data)).mode == "RGB"
    assert Image.open(io.BytesIO(cmyk.data)).format == "JPEG"
    out = Image.open(io.BytesIO(clear.data))
    assert out.format == "PNG" and out.getpixel((15, 5)) == (255, 255, 255)  # clear -> white
    assert out.getpixel((5, 5)) == (10, 200, 10)


# --- retries ------------------------------------------------------------------------------
def test_503_then_success_is_retried(server):
    url = server.add("/flaky.jpg", Resp(503, b"busy", "text/plain"), Resp(body=jpeg()))
    [r] = fetch([url])
    assert r.ok and server.hits["/flaky.jpg"] == 2


def test_persistent_503_gives_up_after_retries(server):
    url = server.add("/down.jpg", Resp(503, b"busy", "text/plain"))
    [r] = fetch([url], cfg(retries=2))
    assert r.error == "http 503 after 2 retries" and server.hits["/down.jpg"] == 3


def test_429_retry_after_is_honoured(server):
    slow_down = Resp(429, b"slow down", "text/plain", headers={"Retry-After": "1"})
    url = server.add("/limited.jpg", slow_down, Resp(body=jpeg()))
    [r] = fetch([url])
    assert r.ok
    first, second = server.times["/limited.jpg"]
    assert second - first >= 0.95  # backoff alone would have waited ~0.01 s


def test_retry_after_http_date_and_cap():
    from datetime import UTC, datetime

    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Wed, 01 Jan 2025 12:00:07 GMT", 60, now) == 7.0
    assert retry_after_seconds("Wed, 01 Jan 2025 11:00:00 GMT", 60, now) == 0.0
    assert retry_after_seconds("86400", 60) == 60.0
    assert retry_after_seconds("soon", 60) is None


def test_timeout_then_retry(server):
    url = server.add("/sleepy.jpg", Resp(body=jpeg(), delay=1.5), Resp(body=jpeg()))
    [r] = fetch([url], cfg(timeout_s=0.3))
    assert r.ok and server.hits["/sleepy.jpg"] == 2


def test_timeout_every_time_fails_with_reason(server):
    url = server.add("/dead.jpg", Resp(body=jpeg(), delay=1.0))
    [r] = fetch([url], cfg(timeout_s=0.2, retries=1))
    assert r.error == "timeout after 1 retries"


# --- cache and resume ---------------------------------------------------------------------
def test_second_run_makes_zero_requests(server, tmp_path):
    urls = [server.add(f"/c{i}.jpg", Resp(body=jpeg(i))) for i in range(6)]
    urls.append(server.add("/gone.jpg", Resp(404, b"", "text/plain")))
    config = cfg(cache_dir=tmp_path / "cache")
    first = fetch(urls, config)
    before = sum(server.hits.values())
    second = fetch(urls, config)
    assert sum(server.hits.values()) == before == 7
    assert all(r.cached for r in second) and not any(r.cached for r in first)
    for a, b in zip(first, second, strict=True):
        assert (a.ok, a.data, a.sha256, a.width, a.error) == (
            b.ok,
            b.data,
            b.sha256,
            b.width,
            b.error,
        )


def test_transient_failures_are_not_cached(server, tmp_path):
    url = server.add("/later.jpg", Resp(503, b"", "text/plain"), Resp(503), Resp(body=jpeg()))
    config = cfg(cache_dir=tmp_path / "cache", retries=1)
    assert fetch([url], config)[0].error == "http 503 after 1 retries"
    assert fetch([url], config)[0].ok


def test_damaged_cache_entry_is_fetched_again(server, tmp_path):
    url = server.add("/d.jpg", Resp(body=jpeg()))
    config = cfg(cache_dir=tmp_path / "cache")
    fetch([url], config)
    [pack] = (tmp_path / "cache" / "packs").glob("*.pack")
    pack.write_bytes(pack.read_bytes()[:-100])  # what a writer killed mid-append leaves
    [r] = fetch([url], config)
    assert r.ok and not r.cached and server.hits["/d.jpg"] == 2


CHILD = """
import sys
from pathlib import Path
from productvlm.catalog.fetch import FetchConfig, fetch_images
cfg = FetchConfig(cache_dir=Path(sys.argv[1]), concurrency=4, backoff_s=0.01)
for r in fetch_images(sys.argv[2:], cfg, progress=False):
    print(r.source, r.ok, flush=True)
"""


def test_resume_after_kill_9_downloads_nothing_twice(server, tmp_path):
    # The first 10 images answer at once; the rest hang until after the kill, so the child
    # is killed with 10 images done and 4 requests in flight.
    urls = [server.add(f"/r{i}.jpg", Resp(body=jpeg(i), gate=i >= 10)) for i in range(30)]
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache), *urls], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        done = [child.stdout.readline() for _ in range(10)]
        assert all(line.endswith(" True\n") for line in done), done
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with server.lock:
        server.generation += 1  # the hung requests belong to the dead client: never answered
    server.gate.set()
    results = fetch(urls, cfg(cache_dir=cache, concurrency=4))
    assert all(r.ok for r in results)
    assert [r.cached for r in results] == [True] * 10 + [False] * 20
    assert all(server.served[f"/r{i}.jpg"] == 1 for i in range(30)), server.served
    packs = sorted((cache / "packs").glob("*.pack"))
    assert len(packs) == 2  # the killed run's pack, still read, and this run's


# --- local files --------------------------------------------------------------------------
def test_local_paths_only_inside_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (root / "img" / "a.jpg").write_bytes(jpeg())
    (outside / "x.jpg").write_bytes(jpeg(1))
    (root / "img" / "link.jpg").symlink_to(outside / "x.jpg")
    (root / "img" / "loop.jpg").symlink_to(root / "img" / "loop.jpg")
    cases = {
        "img/a.jpg": None,
        str(root / "img" / "a.jpg"): None,
        (root / "img" / "a.jpg").as_uri(): None,
        f"{root}/../outside/x.jpg": "outside local root",
        "img/../../outside/x.jpg": "outside local root",
        "img/link.jpg": "outside local root",
        (outside / "x.jpg").as_uri(): "outside local root",
        "img/missing.jpg": "file not found",
        "img/": "not a file",
        "img/loop.jpg": "file not found",  # a symlink loop, on Pythons that resolve it
        "file://otherhost/etc/passwd": "file URL on another host (otherhost) refused",
    }
    results = fetch(list(cases), cfg(local_root=root))
    for r, expected in zip(results, cases.values(), strict=True):
        loop = r.source == "img/loop.jpg" and r.error.startswith("cannot resolve path")
        assert r.error == expected or loop, (r.source, r.error)
    assert results[0].data == jpeg()
    [r] = fetch([str(root / "img" / "a.jpg")])  # no local_root: refused
    assert r.error.startswith("local file refused")


# --- concurrency, streaming ---------------------------------------------------------------
def test_concurrency_bounds_overall_and_per_host(server):
    body = jpeg()
    urls = []
    for i in range(12):
        for host in ("127.0.0.1", "localhost"):
            server.add(f"/{host}/{i}.jpg", Resp(body=body, delay=0.15))
            urls.append(server.url(f"/{host}/{i}.jpg", host))
    results = fetch(urls, cfg(concurrency=4, per_host=3))
    assert all(r.ok for r in results)
    assert server.max_inflight <= 4 and max(server.max_host_inflight.values()) <= 3
    assert server.max_inflight >= 3  # and it does run requests side by side


def test_same_url_in_flight_is_fetched_once(server):
    url = server.add("/shared.jpg", Resp(body=jpeg(), delay=0.2))
    results = fetch([url, " " + url, url])
    assert all(r.ok for r in results) and server.hits["/shared.jpg"] == 1
    assert results[1].source == " " + url


def test_streams_with_a_bounded_window(server):
    url = server.add("/w.jpg", Resp(body=jpeg()))
    pulled = 0

    def sources():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield f"{url}?{i}" if i % 2 else "N.A."

    gen = fetch_images(sources(), cfg(window=8), progress=False)
    assert next(gen).error == "not a URL or path: 'N.A.'"
    time.sleep(0.3)
    assert pulled <= 8 + 2  # admitted up to the window, not the whole stream
    gen.close()  # stopping early cancels the rest cleanly


def test_errors_from_the_source_iterable_propagate():
    def sources():
        yield "N.A."
        raise OSError("catalog.parquet: read failed")

    with pytest.raises(OSError, match="read failed"):
        fetch(sources())


# --- open_image ---------------------------------------------------------------------------
def test_open_image_bytes_path_and_errors(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(_encode(Image.new("LA", (5, 7)), "PNG"))
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (5, 7)
    assert open_image(jpeg()).size == (48, 32)
    with pytest.raises(ProductVLMError, match=r"image bytes: truncated image"):
        open_image(jpeg()[:-400])
    with pytest.raises(ProductVLMError, match=r"decompression bomb"):
        open_image(jpeg(), max_pixels=100)
    with pytest.raises(ProductVLMError, match=r"missing.jpg: cannot read image"):
        open_image(tmp_path / "missing.jpg")


def test_unusable_cache_dir_or_local_root_fails_at_the_call(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ProductVLMError, match=r"local_root .*nope: not a folder"):
        fetch_images(["a.jpg"], cfg(local_root=tmp_path / "nope"))
    with pytest.raises(ProductVLMError, match=r"cache_dir .*file: cannot use it"):
        fetch_images(["a.jpg"], cfg(cache_dir=a_file))


def test_cache_keeps_entries_before_a_torn_record_and_appends_after_it(server, tmp_path):
    urls = [server.add(f"/t{i}.jpg", Resp(body=jpeg(i))) for i in range(3)]
    config = cfg(cache_dir=tmp_path / "cache")
    fetch(urls, config)
    [pack] = (tmp_path / "cache" / "packs").glob("*.pack")
    with pack.open("ab") as f:
        f.write(b'PVC1 {"source": "http://half')  # a header cut short by kill -9
    again = fetch([*urls, server.add("/t3.jpg", Resp(body=jpeg(3)))], config)
    assert [r.cached for r in again] == [True, True, True, False]
    assert fetch(urls[:1] + [again[3].source], config)[1].cached  # the new pack is read too


def test_proxy_variables_are_honoured_once_per_fetch(monkeypatch):
    import asyncio

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "images.internal,127.0.0.1")

    async def proxies():
        async with HttpSession(FetchConfig()) as http:
            return [http.proxy_for(u) for u in
                    ("https://cdn.example.com/a.jpg", "https://images.internal/b.jpg",
                     "http://127.0.0.1:8000/c.jpg")]

    assert asyncio.run(proxies()) == ["http://proxy.corp:3128", None, None]
