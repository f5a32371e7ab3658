"""--engine vllm against --engine hf: engine start time, photos/s and peak RSS, on one run's
own test photos, each engine in a fresh process of its own (so each peak RSS is its own).

Usage (in the vLLM environment, `make venv-vllm`):
    .venv-vllm/bin/python bench/bench_vllm.py --model RUN/train --data RUN/prepared \
        [--n 128] [--batch-size 16] [--max-new-tokens 64] [--calibrated]

    # e.g. the demo's recipe on Qwen2.5-VL, trained in that environment:
    .venv-vllm/bin/productvlm demo --model-family qwen2_5_vl --n 300 --out runs/qwen-demo
    .venv-vllm/bin/python bench/bench_vllm.py --model runs/qwen-demo/train \
        --data runs/qwen-demo/prepared

Both engines answer the same --n photos (the test split's first, cycled if it has fewer),
constrained; without the run's calibration unless --calibrated (then each answer is also
measured: interval and confidence; with vllm the hf engine measures vLLM's answers in one
forced pass, docs/vllm.md). hf in batches of --batch-size (its CPU default), vLLM in one
call (it schedules them itself). Printed per engine: start (load to ready), the answers' wall time
after one warm-up batch, photos/s, peak RSS of the process, and how many answers equal the
hf engine's; then the ratio vllm / hf.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def child(args: argparse.Namespace) -> None:
    """One engine in this process: its figures as one JSON line on stdout."""
    from productvlm.inference.vllm_engine import load_engine
    from productvlm.prepared import load_prepared

    split = load_prepared(Path(args.data))["test"]
    photos = [split[i % len(split)]["image"].convert("RGB") for i in range(args.n)]
    t0 = time.perf_counter()
    batch = args.batch_size if args.engine == "hf" else args.n
    predictor = load_engine(args.engine, args.model, batch_size=batch, device="cpu",
                            max_new_tokens=args.max_new_tokens)
    if not args.calibrated:
        predictor.calibration = None
    start = time.perf_counter() - t0
    predictor.predict(photos[:min(8, args.n)])  # warm-up: first-call costs out of the timing
    t0 = time.perf_counter()
    answers = predictor.predict(photos)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
    print(json.dumps({"engine": args.engine, "start_s": round(start, 2),
                      "wall_s": round(wall, 2), "photos_s": round(args.n / wall, 2),
                      "peak_rss_gb": round(rss, 2),
                      "answers": [(a.raw, a.price_low, a.price_high) for a in answers]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--calibrated", action="store_true", help="with the run's calibration")
    ap.add_argument("--engine", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        return child(args)
    results = {}
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for engine in ("hf", "vllm"):
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--engine", engine],
                              capture_output=True, text=True, env=env)
        if done.returncode:
            sys.exit(f"{engine}: {done.stderr.strip().splitlines()[-1]}")
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    same = sum(a == b for a, b in zip(results["hf"]["answers"], results["vllm"]["answers"],
                                      strict=True))
    load = os.getloadavg()[0]
    kind = "calibrated" if args.calibrated else "uncalibrated"
    print(f"{args.n} photos of {args.data}, {args.model}, {kind}; load average {load:.1f}")
    print(f"{'engine':8} {'start s':>8} {'answers s':>10} {'photos/s':>9} {'peak RSS GB':>12}")
    for engine, r in results.items():
        print(f"{engine:8} {r['start_s']:8.2f} {r['wall_s']:10.2f} {r['photos_s']:9.2f} "
              f"{r['peak_rss_gb']:12.2f}")
    ratio = results["vllm"]["photos_s"] / results["hf"]["photos_s"]
    print(f"vllm / hf photos/s: {ratio:.2f}x; answers (and intervals) equal to hf's: {same} "
          f"of {args.n}")


if __name__ == "__main__":
    main()
