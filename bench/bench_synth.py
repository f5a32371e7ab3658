"""Throughput of `productvlm synth` (products/s), and optionally how learnable its photos are.

Usage: .venv/bin/python bench/bench_synth.py [--n 600] [--learnability]

Throughput: the same catalog rendered by one process (the baseline) and by one process per
core, timed in the same run. Besides wall-clock products/s it prints CPU ms per product
(this process and its workers), so the figure on a busy shared machine can be told apart
from what two idle cores would give (2 cores / CPU seconds per product).

--learnability trains a small CNN (not the project's model: a quick proxy, on CPU) on 112 px
photos of ~1,000 products and reports, on 200 held-out products, category3 accuracy, title
token F1 (the title's words predicted as a multi-label set) and the median price error.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from productvlm.catalog.synth import synth  # noqa: E402


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(n: int, workers: int, tmp: Path) -> None:
    results = {}
    for w in (1, workers):
        cpu0, t0 = _cpu_s(), time.perf_counter()
        res = synth(tmp / f"w{w}", n=n, seed=0, workers=w)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        kb = sum(p.stat().st_size for p in res.images.iterdir()) / 1024 / res.n_images
        results[w] = n / wall
        print(f"workers={w}: {n} products in {wall:.2f} s = {n / wall:.0f} products/s wall; "
              f"{cpu / n * 1000:.1f} CPU ms/product (-> {2 * n / cpu:.0f} products/s on 2 idle "
              f"cores); mean image {kb:.0f} KB")
    print(f"speed-up with {workers} workers vs 1: {results[workers] / results[1]:.2f}x; "
          f"target >= 100 products/s on 2 cores")


def learnability(tmp: Path, n: int = 1200, n_test: int = 200, epochs: int = 30) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(2)
    res = synth(tmp / "learn", n=n, seed=1, max_side=320)
    rows = pq.read_table(res.parquet).to_pylist()

    def load(path: str) -> np.ndarray:  # letterbox to a white square, like an aspect-keeping
        im = Image.open(path).convert("RGB")  # processor would, then 112 px
        side = max(im.size)
        sq = Image.new("RGB", (side, side), (255, 255, 255))
        sq.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        return np.asarray(sq.resize((112, 112), Image.Resampling.BILINEAR))

    x = torch.from_numpy(np.stack([load(r["imageurl"]) for r in rows])).permute(0, 3, 1, 2)
    cats = sorted({r["category3_code"] for r in rows})
    vocab = sorted({w for r in rows for w in r["title"].split()})
    y_cat = torch.tensor([cats.index(r["category3_code"]) for r in rows])
    y_tok = torch.zeros(len(rows), len(vocab))
    for i, r in enumerate(rows):
        for w in r["title"].split():
            y_tok[i, vocab.index(w)] = 1
    y_price = torch.tensor([np.log(r["full_price"]) for r in rows], dtype=torch.float32)
    mu, sd = y_price[:-n_test].mean(), y_price[:-n_test].std()

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU())

    body = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten())
    heads = nn.Linear(512, len(cats) + len(vocab) + 1)
    model = nn.Sequential(body, heads)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    train = torch.arange(n - n_test)
    t0 = time.perf_counter()
    for _epoch in range(epochs):
        model.train()
        for idx in train[torch.randperm(len(train))].split(64):
            out = model(x[idx].float() / 255)
            loss = (nn.functional.cross_entropy(out[:, : len(cats)], y_cat[idx])
                    + nn.functional.binary_cross_entropy_with_logits(
                        out[:, len(cats):-1], y_tok[idx]) * 10
                    + nn.functional.mse_loss(out[:, -1], (y_price[idx] - mu) / sd))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x[-n_test:].float() / 255)
    acc = (out[:, : len(cats)].argmax(1) == y_cat[-n_test:]).float().mean().item()
    pred_tok = out[:, len(cats):-1] > 0
    tp = (pred_tok & (y_tok[-n_test:] > 0)).sum(1).float()
    f1 = (2 * tp / (pred_tok.sum(1) + y_tok[-n_test:].sum(1))).mean().item()
    price = torch.exp(out[:, -1] * sd + mu)
    ape = ((price - y_price[-n_test:].exp()).abs() / y_price[-n_test:].exp()).median().item()
    print(f"learnability ({n - n_test} train / {n_test} test products, 112 px, small CNN, "
          f"{epochs} epochs in {time.perf_counter() - t0:.0f} s): category3 accuracy {acc:.3f} "
          f"(target >= 0.9), title token F1 {f1:.3f} (target >= 0.8), median price error "
          f"{ape:.1%}; {len(cats)} categories, {len(vocab)} title words")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="products per throughput run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--learnability", action="store_true", help="also train the CNN proxy")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as d:
        throughput(args.n, args.workers, Path(d))
        if args.learnability:
            learnability(Path(d))


if __name__ == "__main__":
    main()
