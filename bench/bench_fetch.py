"""Image fetch throughput: fetch_images and `productvlm prepare` vs the recipe's sequential loop.

Usage: .venv/bin/python bench/bench_fetch.py [--n 3040] [--latency 0.05] [--concurrency 64]
           [--baseline-n 200] [--skip-prepare] [--stream-n 20000]

A local HTTP server (its own process, so it does not share the client's GIL) adds --latency
seconds to every request and serves --n product photos made by `productvlm synth` (30-200 KB
JPEGs, generated once into bench/out/fetch/ and reused). Timed in the same run:
  1. fetch_images over all of them (no cache, progress bar off);
  2. the whole `prepare` (read, validate, fetch, stage, split, save the dataset), unless
     --skip-prepare, and its rerun with every image in the cache;
  3. the public recipe's loop, one `requests.get` after another, on the first --baseline-n
     images, extrapolated to --n (printed as such);
  4. full decoding of every image to RGB (open_image) on 2 threads: the CPU floor;
  5. with --stream-n N, peak memory while N sources (copies of the photos, told apart by a
     query string) stream through fetch_images without being kept.
The limit is max(n * latency / concurrency, decode time on 2 cores). Targets: fetch >= 15x the
sequential loop, and within 2x of the limit. Timings on a shared machine are noisy: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from productvlm.catalog.fetch import FetchConfig, fetch_images  # noqa: E402
from productvlm.images import normalize_image_bytes, open_image  # noqa: E402

DATA = ROOT / "bench" / "out" / "fetch"
PLACEHOLDER = "http://images.invalid/"


def serve(images: Path, latency: float, port_q: mp.Queue) -> None:
    """Serve images/<name> with `latency` seconds added to every request (keep-alive)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(latency)
            path = images / os.path.basename(self.path.split("?")[0])
            try:
                body = path.read_bytes()
            except OSError:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer.request_queue_size = 1024
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port_q.put(httpd.server_port)
    httpd.serve_forever()


def make_catalog(n: int) -> Path:
    """A fault-free synth catalog of n products (made once, reused by later runs)."""
    from productvlm.synth.generate import synth

    out = DATA / f"synth-{n}"
    if not (out / "catalog.parquet").is_file():
        print(f"generating {n} product photos with productvlm synth (once) ...", flush=True)
        t = time.perf_counter()
        synth(out, n=n, seed=0, fault_rate=0.0, image_base_url=PLACEHOLDER, overwrite=True)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def sequential(urls: list[str], dest: Path) -> float:
    """The recipe's loop: one requests.get after another, each image written to a file."""
    import requests

    dest.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, url in enumerate(urls):
        r = requests.get(url, timeout=30)
        r.raise_for_status()
        (dest / f"{i}.jpg").write_bytes(r.content)
    return time.perf_counter() - t


def decode_time(blobs: list[bytes], fn, threads: int = 2) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, blobs, chunksize=16):
            pass
    return time.perf_counter() - t


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, unlike ru_maxrss, is not inherited across fork+exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream(urls: list[str], count: int, conc: int, out_q: mp.Queue) -> None:
    """Stream `count` sources through fetch_images, keeping nothing; report peak RSS."""
    gen = (f"{urls[i % len(urls)]}?copy={i}" for i in range(count))
    cfg = FetchConfig(concurrency=conc, per_host=conc)
    before = peak_rss_mb()
    t = time.perf_counter()
    streamed = sum(len(r.data or b"") for r in fetch_images(gen, cfg, progress=False))
    peak = peak_rss_mb()
    out_q.put(
        f"streamed {count} sources ({streamed / 1e9:.2f} GB of images) through "
        f"fetch_images in {time.perf_counter() - t:.0f} s: peak RSS {peak:.0f} MB "
        f"({before:.0f} MB after imports)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3040)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--baseline-n", type=int, default=200)
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument("--stream-n", type=int, default=0, help="also stream N sources (memory)")
    args = ap.parse_args()
    n, lat, conc = args.n, args.latency, args.concurrency

    import pandas as pd

    catalog = make_catalog(n)
    images = catalog / "images"
    port_q: mp.Queue = mp.Queue()
    server = mp.Process(target=serve, args=(images, lat, port_q), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port_q.get(timeout=30)}/"
    work = DATA / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    df = pd.read_parquet(catalog / "catalog.parquet")
    df["imageurl"] = df["imageurl"].str.replace(PLACEHOLDER, base, regex=False)
    df.to_parquet(work / "catalog.parquet")
    urls = df["imageurl"].tolist()
    sizes = [p.stat().st_size for p in images.iterdir()]
    cores = len(os.sched_getaffinity(0))
    print(
        f"{n} images, {min(sizes) // 1000}-{max(sizes) // 1000} KB "
        f"(mean {sum(sizes) / len(sizes) / 1000:.0f} KB); latency {lat * 1000:.0f} ms/request; "
        f"{cores} cores; load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )

    # 1. fetch_images, all images, no cache
    cfg = FetchConfig(concurrency=conc, per_host=conc)
    t, cpu = time.perf_counter(), time.process_time()
    errors = [r.error for r in fetch_images(urls, cfg, progress=False) if not r.ok]
    t_fetch, cpu_fetch = time.perf_counter() - t, time.process_time() - cpu
    assert not errors, errors[:5]
    rss_mb = peak_rss_mb()
    print(
        f"fetch_images: {t_fetch:.2f} s ({n / t_fetch:.0f} images/s), all {n} ok, "
        f"concurrency {conc}; client CPU {cpu_fetch:.1f} s ({cpu_fetch / t_fetch:.2f} cores "
        f"busy); peak RSS so far {rss_mb:.0f} MB",
        flush=True,
    )

    # 2. the whole prepare command, then its rerun from the cache
    t_prepare = None
    if not args.skip_prepare:
        from productvlm.catalog.prepare import prepare

        conf = work / "prepare.yaml"
        conf.write_text(f"fetch:\n  concurrency: {conc}\n  per_host: {conc}\n")

        def timed_prepare():
            t = time.perf_counter()
            res = prepare(str(work / "catalog.parquet"), work / "prepared", preset="burberry",
                          config_file=conf, progress=False, verbose=False)
            return res, time.perf_counter() - t

        res, t_prepare = timed_prepare()
        _, t_rerun = timed_prepare()  # every image now in the cache
        print(
            f"prepare: {t_prepare:.2f} s ({res.prepared} rows prepared, {res.failed} failed); "
            f"rerun with every image cached: {t_rerun:.2f} s",
            flush=True,
        )

    # 3. the sequential recipe loop on a subset, extrapolated
    k = min(args.baseline_n, n)
    t_seq_k = sequential(urls[:k], work / "sequential")
    t_seq = t_seq_k * n / k
    print(
        f"sequential requests.get: {t_seq_k:.2f} s for the first {k} images, "
        f"extrapolated to {n}: {t_seq:.1f} s",
        flush=True,
    )

    # 4. the decode floor
    blobs = [p.read_bytes() for p in sorted(images.iterdir())]
    t_decode = decode_time(blobs, open_image)
    t_check = decode_time(blobs, normalize_image_bytes)
    print(
        f"full decode to RGB (open_image) of all {len(blobs)} images on 2 threads: "
        f"{t_decode:.2f} s; our validation (normalize_image_bytes): {t_check:.2f} s"
    )
    del blobs

    # 5. bounded memory on a long stream, in a fresh process so its peak RSS is its own
    if args.stream_n:
        ctx = mp.get_context("spawn")
        out_q = ctx.Queue()
        child = ctx.Process(target=stream, args=(urls, args.stream_n, conc, out_q))
        child.start()
        print(out_q.get(), flush=True)
        child.join()
    import psutil

    server_cpu = sum(psutil.Process(server.pid).cpu_times()[:2])
    server.terminate()

    t_net = n * lat / conc
    limit = max(t_net, t_decode)
    print()
    print(
        f"limit = max(n*latency/concurrency = {t_net:.2f} s, decode on 2 cores = "
        f"{t_decode:.2f} s) = {limit:.2f} s"
    )
    print(
        f"fetch_images: {t_fetch:.2f} s = {t_seq / t_fetch:.1f}x faster than sequential "
        f"(target >= 15x); {t_fetch / limit:.2f}x the limit (target <= 2x)"
    )
    if t_prepare is not None:
        print(
            f"prepare:      {t_prepare:.2f} s = {t_seq / t_prepare:.1f}x faster than sequential;"
            f" {t_prepare / limit:.2f}x the limit"
        )
    floor = cpu_fetch / 2
    print(
        f"fetch_images used {cpu_fetch:.1f} s of client CPU ({1000 * cpu_fetch / n:.1f} ms per "
        f"image; the server used {server_cpu:.1f} s over the whole run, on the same cores): "
        f"on 2 idle cores it could not beat {floor:.1f} s = {t_seq / floor:.0f}x sequential"
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f} (2 cores shared: noisy timings)")


if __name__ == "__main__":
    main()
