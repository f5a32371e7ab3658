"""The batch engine in one process against a Ray Data pool of model actors: rows/s of
`productvlm audit` and `productvlm predict` over a catalog, and the peak memory of each.

Usage:
    .venv/bin/python bench/bench_ray.py --run runs/demo/train --catalog runs/demo/catalog
    .venv/bin/python bench/bench_ray.py --run RUN --catalog CAT --rows 200 --actors 2
    .venv/bin/python bench/bench_ray.py --run RUN --catalog CAT --rows 64 --scale 100000

Each mode runs as its own `productvlm` command (audit into a fresh folder; predict --json over
the catalog's first --rows photos), one after another on the same machine: one process first
(the baseline), then `--ray local --ray-actors N`. Printed per mode: wall seconds, rows/s, the
ratio to the baseline, the driver's peak RSS and the whole process tree's peak RSS (Ray's
actors and daemons included), and whether audit.csv / the answers equal the baseline's. A
Ray pool on a 2-core machine shares those 2 cores: the figure to read there is the cost of
Ray's machinery, not a speed-up, which needs more cores, GPUs or machines. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

EXE = Path(sys.executable).with_name("productvlm")


def run(cmd: list[str], stdout: Path | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak driver RSS GB, peak process-tree RSS GB) of ``cmd``."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    with open(stdout or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env)
        me, peak_driver, peak_tree = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            try:
                tree = [me, *me.children(recursive=True)]
                rss = [p.memory_info().rss for p in tree if p.is_running()]
                peak_driver, peak_tree = max(peak_driver, rss[0]), max(peak_tree, sum(rss))
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                pass
            time.sleep(0.2)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    return time.perf_counter() - t0, peak_driver / 1e9, peak_tree / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a calibrated run directory")
    ap.add_argument("--catalog", type=Path, required=True, help="a synth catalog folder")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--scale", type=int, help="instead: the peak memory of an audit of this "
                    "many catalog rows (--rows of them with their photos, the rest without)")
    args = ap.parse_args()
    if args.scale:
        return scale(args)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    with (args.catalog / "catalog.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:args.rows]
    photos = [str((args.catalog / r["imageurl"]).resolve()) for r in rows
              if r.get("imageurl") and (args.catalog / r["imageurl"]).is_file()]
    print(f"{args.run}: audit of {len(rows)} catalog rows, predict of {len(photos)} photos, "
          f"batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"{'':22} {'seconds':>8} {'rows/s':>7} {'x base':>7} {'driver GB':>10} "
          f"{'tree GB':>8} same")
    for task in ("audit", "predict"):
        base = None
        for mode in ("one process", f"ray, {args.actors} actors"):
            ray = [] if base is None else ["--ray", "local", "--ray-actors", str(args.actors)]
            out = work / f"{task}-{len(ray)}"
            if task == "audit":
                cmd = [str(EXE), "audit", "--model", str(args.run),
                       str(args.catalog / "catalog.parquet"), "--out", str(out),
                       "--limit", str(args.rows), "--batch-size", str(args.batch_size), *ray]
                secs, driver, tree = run(cmd)
                result = (out / "audit.csv").read_text()
            else:
                cmd = [str(EXE), "predict", "--model", str(args.run), "--json",
                       "--batch-size", str(args.batch_size), *photos, *ray]
                secs, driver, tree = run(cmd, stdout=work / f"{task}-{len(ray)}.jsonl")
                lines = (work / f"{task}-{len(ray)}.jsonl").read_text().splitlines()
                result = [{k: v for k, v in json.loads(x).items() if k != "latency_ms"}
                          for x in lines]
            n = len(rows) if task == "audit" else len(photos)
            base = base or (secs, result)
            print(f"{task + ', ' + mode:22} {secs:8.1f} {n / secs:7.2f} "
                  f"{base[0] / secs:7.2f} {driver:10.2f} {tree:8.2f} {result == base[1]}")
    shutil.rmtree(work, ignore_errors=True)


def scale(args: argparse.Namespace) -> None:
    """Peak memory of `productvlm audit` over ``args.scale`` rows, in one process and on Ray.

    The first ``args.rows`` rows are the catalog's own, with their photos (model work); the
    rest repeat them under new product codes with a photo path that does not exist, so each
    is fetched, fails in its actor and lands in failures.csv without a model call. That keeps
    a 2-core run short while every row still crosses the driver, Ray and the part files:
    the memory that grows with a catalog's size is measured; the model's own is constant.
    """
    work = Path(tempfile.mkdtemp(prefix="bench-ray-scale-"))
    with (args.catalog / "catalog.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields, source = reader.fieldnames or [], list(reader)
    for r in source:  # the photos beside this catalog, wherever synth wrote it
        photo = args.catalog / "images" / Path(r.get("imageurl") or "none").name
        r["imageurl"] = str(photo.resolve()) if photo.is_file() else "N.A."
    source = [r for r in source if r["imageurl"] != "N.A."]
    scaled = work / "catalog.csv"
    with scaled.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields)
        out.writeheader()
        for i in range(args.scale):
            row = dict(source[i % len(source)])
            if i >= args.rows:
                row["product_code"] = str(90_000_000 + i)
                row["imageurl"] = str(work / "missing" / f"{i}.jpg")
            else:  # beside the scaled catalog: local photos must be inside its folder
                (work / "images").mkdir(exist_ok=True)
                photo = work / "images" / Path(row["imageurl"]).name
                shutil.copy2(row["imageurl"], photo)
                row["imageurl"] = str(photo)
            out.writerow(row)
    print(f"{args.run}: audit of {args.scale:,} rows ({args.rows} with photos), batch "
          f"{args.batch_size}, {os.cpu_count()} cores")
    print(f"{'':22} {'seconds':>8} {'rows/s':>7} {'driver GB':>10} {'tree GB':>8} same")
    base = None
    for mode in ("one process", f"ray, {args.actors} actors"):
        ray = [] if base is None else ["--ray", "local", "--ray-actors", str(args.actors)]
        out_dir = work / f"audit-{len(ray)}"
        cmd = [str(EXE), "audit", "--model", str(args.run), str(scaled), "--out",
               str(out_dir), "--batch-size", str(args.batch_size), *ray]
        secs, driver, tree = run(cmd)
        result = ((out_dir / "audit.csv").read_text(), (out_dir / "failures.csv").read_text())
        base = base or result
        print(f"{mode:22} {secs:8.1f} {args.scale / secs:7.0f} {driver:10.2f} {tree:8.2f} "
              f"{result == base}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
