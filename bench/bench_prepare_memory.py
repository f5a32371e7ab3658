"""Peak memory of `productvlm prepare` on a 20,000-product catalog, against a 500 MB target.

Usage: .venv/bin/python bench/bench_prepare_memory.py [--rows 20000] [--size 256x320]

Writes a Burberry-schema Parquet catalog whose 20,000 rows each point at their own JPEG
(noisy, so ~40 KB like real thumbnails, and all distinct), then runs prepare (the library
call behind the command) as a child process twice, on a tenth of the rows and on all of
them, and reports each run's peak RSS (the kernel's ru_maxrss, the high-water mark including
file-backed pages) together with baselines measured in the same run: the RSS of merely
importing what prepare imports, and the bytes of images stored, i.e. what a prepare holding
every image in memory would need.
A streaming prepare's peak does not grow with the catalog: compare the two runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

TARGET_MB = 500
# The library call behind `productvlm prepare CATALOG --out OUT --limit N --no-progress`
# (called directly so the figure does not depend on the other stages the CLI imports).
_RUN = ("import sys; from pathlib import Path; from productvlm.catalog.prepare import prepare; "
        "prepare(sys.argv[1], Path(sys.argv[2]), limit=int(sys.argv[3]), progress=False)")
CATS = ["BAGS", "SHOES", "SCARVES", "COATS", "SUNGLASSES", "WALLETS", "HATS", "BELTS"]


def make_catalog(root: Path, rows: int, size: tuple[int, int]) -> Path:
    """Parquet catalog (Burberry columns) + one distinct JPEG per row under root/images."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    w, h = size
    bases = [rng.integers(150, 256, (h, w, 3), dtype=np.uint8) for _ in range(16)]
    t0 = time.time()
    for i in range(rows):
        px = bases[i % 16].copy()
        y, x = (i * 7) % (h - 40), (i * 13) % (w - 40)  # a patch makes every file distinct
        px[y : y + 40, x : x + 40] = (i % 251, (i // 251) % 251, 60)
        Image.fromarray(px).save(root / "images" / f"{i}.jpg", quality=85)
    print(f"wrote {rows} images in {time.time() - t0:.0f}s", flush=True)
    n = np.arange(rows)
    df = pd.DataFrame({
        "product_code": n.astype("int64"),
        "title": [f"Check Cotton {CATS[i % 8].title()} {i}" for i in n],
        "category1_code": "WOMAN", "category2_code": "ACCESSORIES",
        "category3_code": [CATS[i % 8] for i in n],
        "currency_code": "USD",
        "full_price": (100 + (n % 97) * 25).astype("float64"),
        "imageurl": [f"images/{i}.jpg" for i in n],
    })
    df.to_parquet(root / "catalog.parquet")
    return root / "catalog.parquet"


# A wrapper per measurement, so RUSAGE_CHILDREN covers exactly one child (ru_maxrss is the
# maximum over all children ever waited for; Linux reports it in KiB).
_WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` to completion; return (its peak RSS in MB, seconds taken)."""
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True)
    took = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return int(p.stdout.strip().splitlines()[-1]) / 1024, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--size", default="256x320", help="image WIDTHxHEIGHT")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        catalog = make_catalog(tmp / "catalog", args.rows, size)  # type: ignore[arg-type]
        env_py = str(Path(sys.executable))
        imports = "import productvlm.catalog.prepare, datasets, pyarrow, pandas, PIL.Image"
        base_mb, _ = peak_rss_mb([env_py, "-c", imports])
        small = max(args.rows // 10, 1)
        results = []
        for rows in (small, args.rows):
            out = tmp / f"out-{rows}"
            mb, took = peak_rss_mb([env_py, "-c", _RUN, str(catalog), str(out), str(rows)])
            stored = sum(f.stat().st_size for f in (out / "dataset").rglob("*.arrow"))
            results.append((rows, mb, took, stored))
            shutil.rmtree(out)
        print(f"\nprepare peak RSS, {os.cpu_count()} cores, images {args.size} JPEG:")
        print(f"  baseline: importing prepare's modules        {base_mb:7.0f} MB")
        for rows, mb, took, stored in results:
            print(f"  prepare {rows:6d} rows: peak {mb:5.0f} MB in {took:5.0f}s "
                  f"({rows / took:4.0f} rows/s); images stored {stored / 2**20:6.0f} MB")
        big = results[-1]
        print(f"  target {TARGET_MB} MB: peak/target = {big[1] / TARGET_MB:.2f} "
              f"({'PASS' if big[1] < TARGET_MB else 'FAIL'}); "
              f"peak above import baseline: {big[1] - base_mb:.0f} MB; "
              f"peak {args.rows} rows / peak {small} rows = {big[1] / results[0][1]:.2f}; "
              f"stored images / peak = {big[3] / 2**20 / big[1]:.1f}x")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
