"""Load test of `productvlm serve` on loopback: micro-batching on against off, same run.

Usage:
    .venv/bin/python bench/bench_serve.py                      # tiny random model, CPU
    .venv/bin/python bench/bench_serve.py --model runs/demo/train --requests 128 --threads 4

It starts two `productvlm serve` subprocesses, batching on (--max-batch 16) and off
(--max-batch 1), warms both up, then sends single-photo POST /v1/predict requests from 1, 4
and 16 concurrent clients, each level run on, off, off, on (each run bounded by --requests and
--seconds) so a shared machine's changing load hits both alike, and prints throughput,
p50/p95 latency, mean batch size and errors. A last phase sends 2,000
requests to a fresh batching server and compares its resident memory after 200 and after
2,000 requests (a leak shows as growth). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    mean_batch: float = 0.0

    def merge(self, other: Level) -> Level:
        errors = {k: self.errors.get(k, 0) + other.errors.get(k, 0)
                  for k in {*self.errors, *other.errors}}
        return Level(self.clients, self.latencies + other.latencies, errors,
                     self.seconds + other.seconds, (self.mean_batch + other.mean_batch) / 2)

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] * 1000


def sample_photos(n: int = 8) -> list[bytes]:
    """A few different product-like JPEGs (a bag shape in varied colours)."""
    out = []
    for i in range(n):
        img = Image.new("RGB", (320, 240), (245, 243, 240))
        d = ImageDraw.Draw(img)
        colour = (40 + 25 * i % 200, 90 + 37 * i % 150, 160 - 15 * i % 140)
        d.rounded_rectangle((100, 70, 220, 220), 16, fill=colour)
        d.arc((125, 25, 195, 110), 180, 360, fill=colour, width=8)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_tiny_model(folder: Path) -> Path:
    """A random tiny Phi-3-vision with a small tokenizer: the model tests and the demo use."""
    from productvlm.models.phi3v.tiny import save_tiny_model
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    texts = [f"Product: Check Wool Scarf {i}, Category: SCARVES, Full Price: {i * 10}.00"
             for i in range(200)]
    tok = train_tiny_tokenizer(texts, vocab_size=400)
    return save_tiny_model(folder, tokenizer=tok, num_crops=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`productvlm serve` in a subprocess, so its memory is measured alone."""

    def __init__(self, model: str, max_batch: int, args: argparse.Namespace) -> None:
        self.max_batch = max_batch
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "productvlm.cli", "serve", "--model", model,
               "--port", str(self.port), "--max-batch", str(max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1024"]
        if args.max_new_tokens:
            cmd += ["--max-new-tokens", str(args.max_new_tokens)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise SystemExit("server did not start within 180 s")

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(url: str, clients: int, requests: int, seconds: float,
               photos: list[bytes]) -> Level:
    """``clients`` loops sending one photo each until ``requests`` or ``seconds`` run out."""
    level = Level(clients)
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            photo = photos[sent % len(photos)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/v1/predict",
                                 files={"files": ("photo.jpg", photo, "image/jpeg")})
                key = None if r.status_code == 200 else f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                key = type(e).__name__
            if key is None:
                level.latencies.append(time.perf_counter() - t0)
            else:
                level.errors[key] = level.errors.get(key, 0) + 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        level.seconds = time.perf_counter() - t0
    return level


def batching_stats(server: Server) -> tuple[int, int]:
    stats = httpx.get(server.url + "/v1/model", timeout=10).json()["batching"]
    return stats["batches"], stats["images"]


def measure(server: Server, clients: int, args: argparse.Namespace,
            photos: list[bytes]) -> Level:
    b0, i0 = batching_stats(server)
    level = asyncio.run(load(server.url, clients, args.requests, args.seconds, photos))
    b1, i1 = batching_stats(server)
    level.mean_batch = (i1 - i0) / max(b1 - b0, 1)
    errs = sum(level.errors.values())
    print(f"  max_batch={server.max_batch:<3} clients={clients:<3} {level.done:5d} ok "
          f"{errs:3d} errors  {level.throughput:7.2f} req/s  p50 {level.pct(0.5):8.1f} ms  "
          f"p95 {level.pct(0.95):8.1f} ms  mean batch {level.mean_batch:5.1f}"
          + (f"  {level.errors}" if errs else ""), flush=True)
    return level


def compare(model: str, args: argparse.Namespace, photos: list[bytes]) -> None:
    """Both servers up at once; each level measured on one then the other, back to back, so
    a shared machine's changing load hits both alike."""
    on, off = Server(model, 16, args), Server(model, 1, args)
    results: dict[tuple[int, int], Level] = {}
    try:
        for server in (on, off):  # warm-up: first calls allocate and build caches
            asyncio.run(load(server.url, 4, 16, 120, photos))
        for clients in args.clients:
            # on, off, off, on: a drift in the machine's load over the level cancels out
            for server in (on, off, off, on):
                level = measure(server, clients, args, photos)
                key = (server.max_batch, clients)
                results[key] = results[key].merge(level) if key in results else level
    finally:
        on.stop()
        off.stop()
    print("\nthroughput, batching on / off:")
    for clients in args.clients:
        a, b = results[16, clients], results[1, clients]
        ratio = a.throughput / max(b.throughput, 1e-9)
        target = "  (target >= 3x)" if clients == 16 else ""
        print(f"  {clients:3d} clients: {a.throughput:7.2f} / {b.throughput:7.2f} req/s = "
              f"{ratio:5.2f}x{target}; p50 {a.pct(0.5):.0f} / {b.pct(0.5):.0f} ms, "
              f"p95 {a.pct(0.95):.0f} / {b.pct(0.95):.0f} ms; errors "
              f"{sum(a.errors.values())} / {sum(b.errors.values())}")


def memory_phase(model: str, args: argparse.Namespace, photos: list[bytes]) -> None:
    server = Server(model, 16, args)
    try:
        first = asyncio.run(load(server.url, 16, 200, 3600, photos))
        rss200 = server.rss_mb()
        rest = asyncio.run(load(server.url, 16, args.memory_requests - 200, 3600, photos))
        rss_end = server.rss_mb()
    finally:
        server.stop()
    errs = sum(first.errors.values()) + sum(rest.errors.values())
    done = first.done + rest.done
    print(f"\nmemory: RSS after 200 requests {rss200:.1f} MB, after {done} requests "
          f"{rss_end:.1f} MB: {100 * (rss_end / rss200 - 1):+.1f}% (target within 10%), "
          f"{errs} errors")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model folder or run; default: a tiny random model")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=32,
                   help="per run; each level runs twice per setting")
    p.add_argument("--seconds", type=float, default=45, help="time cap per run")
    p.add_argument("--max-wait-ms", type=float, default=10)
    p.add_argument("--max-new-tokens", type=int, default=32, help="0: the model's setting")
    # One thread: on a shared or small CPU, OpenMP threads that spin-wait for each other
    # made a tiny model's steps over 10x slower than one thread.
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--memory-requests", type=int, default=2000, help="0 skips the phase")
    args = p.parse_args()

    photos = sample_photos()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_model(Path(tmp) / "tiny-phi3v"))
        print(f"model: {model}; {args.requests} requests or {args.seconds:g} s per level; "
              f"torch threads {args.threads}; max_wait_ms {args.max_wait_ms:g}")
        compare(model, args, photos)
        if args.memory_requests:
            memory_phase(model, args, photos)


if __name__ == "__main__":
    main()
