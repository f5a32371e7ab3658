"""Throughput of `productvlm synth` (products/s), and optionally how learnable its photos are.

Usage: .venv/bin/python bench/bench_synth.py [--n 600] [--learnability]

Throughput: the same catalog rendered by one process (the baseline) and by one process per
core, timed in the same run. Besides wall-clock products/s it prints CPU ms per product
(this process and its workers), so the figure on a busy shared machine can be told apart
from what two idle cores would give (2 cores / CPU seconds per product).

--learnability trains a small CNN (not the project's model: a quick proxy, on CPU) on 112 px
photos of 1,000 products, one softmax head per visible attribute (item, variant, colour,
finish), and reports on 200 held-out products category3 accuracy, the token F1 of the title
those predictions spell, and the error of the price they imply (beside the noise floor).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from productvlm.synth.generate import synth  # noqa: E402


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


def _token_f1(pred: str, true: str) -> float:
    p, t = Counter(pred.split()), Counter(true.split())
    common = sum((p & t).values())
    return 2 * common / (sum(p.values()) + sum(t.values())) if common else 0.0


def learnability(tmp: Path, n: int = 1200, n_test: int = 200, epochs: int = 15) -> None:
    """Train a small CNN to name what each photo shows; score held-out products."""
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from productvlm.synth.assortment import price_point
    from productvlm.synth.generate import SynthConfig, sample_products

    torch.manual_seed(0)
    torch.set_num_threads(2)
    res = synth(tmp / "learn", n=n, seed=1, max_side=320)
    products = sample_products(SynthConfig(out=res.out, n=n, seed=1, max_side=320))
    rows, attrs = products.rows, products.attributes

    def load(path: Path) -> np.ndarray:  # letterbox to a white square, as an aspect-keeping
        im = Image.open(path).convert("RGB")  # processor would, then 112 px
        side = max(im.size)
        sq = Image.new("RGB", (side, side), (255, 255, 255))
        sq.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        return np.asarray(sq.resize((112, 112), Image.Resampling.BILINEAR))

    x = torch.from_numpy(np.stack([load(p) for p in products.paths])).permute(0, 3, 1, 2)
    # one softmax head per visible attribute: the title is one choice per slot
    slots = {
        "item": [a.item for a in attrs], "variant": [a.variant for a in attrs],
        "colour": [a.colour for a in attrs], "finish": [a.finish for a in attrs],
    }
    classes = {k: list(dict.fromkeys(v)) for k, v in slots.items()}
    ys = {k: torch.tensor([classes[k].index(v) for v in vals]) for k, vals in slots.items()}
    sizes = [len(classes[k]) for k in slots]

    def conv(i: int, o: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.BatchNorm2d(o), nn.ReLU())

    # ~30 M multiply-adds per 112 px image: seconds an epoch on two idle CPU cores
    model = nn.Sequential(conv(3, 32, 2), conv(32, 48, 2), conv(48, 64, 2), conv(64, 128, 2),
                          conv(128, 128, 1), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(512, sum(sizes)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    train = torch.arange(n - n_test)
    batches = -(-len(train) // 32)
    # one-cycle: without the final decay, batch-norm statistics make held-out accuracy
    # swing by tens of points from one epoch to the next
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * batches)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if epoch % 5 == 0:
            print(f"  epoch {epoch}/{epochs}, {time.perf_counter() - t0:.0f} s", flush=True)
        model.train()
        for idx in train[torch.randperm(len(train))].split(32):
            outs = model(x[idx].float() / 255).split(sizes, dim=1)
            loss = sum(nn.functional.cross_entropy(o, ys[k][idx])
                       for o, k in zip(outs, slots, strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        outs = model(x[-n_test:].float() / 255).split(sizes, dim=1)
    pred = {k: [classes[k][j] for j in o.argmax(1).tolist()]
            for o, k in zip(outs, slots, strict=True)}
    test = range(n - n_test, n)
    acc = {k: np.mean([pred[k][t] == slots[k][i] for t, i in enumerate(test)]) for k in slots}
    f1s, ape, ape_floor = [], [], []
    for t, i in enumerate(test):
        item, v, c, f = (pred[k][t] for k in slots)
        f1s.append(_token_f1(item.title(v, c, f), rows[i]["title"]))
        truth = rows[i]["full_price"]
        guess = price_point(item.base * v.mult * f.mult)
        ideal = price_point(attrs[i].item.base * attrs[i].variant.mult * attrs[i].finish.mult)
        ape.append(abs(guess - truth) / truth)
        ape_floor.append(abs(ideal - truth) / truth)
    print(f"learnability ({n - n_test} train / {n_test} test products, 112 px, small CNN, "
          f"{epochs} epochs in {time.perf_counter() - t0:.0f} s):")
    print(f"  category3 accuracy {acc['item']:.3f} (target >= 0.9); title token F1 "
          f"{np.mean(f1s):.3f} (target >= 0.8)")
    print("  slot accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    print(f"  price from the predicted attributes: median error {np.median(ape):.1%}, within "
          f"10% {np.mean(np.array(ape) <= 0.1):.0%} (noise floor with true attributes: median "
          f"{np.median(ape_floor):.1%})")


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
