"""Generation throughput of the one prediction path: batched vs one image at a time, and
constrained vs free decoding.

Usage: .venv/bin/python bench/bench_generate.py [--n 32] [--batch-size 16] [--threads 1]
           [--max-new-tokens 48] [--repeat 3] [--model FOLDER] [--data PREPARED]

    # the constraint's cost on a trained model and its own test photos (the demo's):
    .venv/bin/python bench/bench_generate.py --model runs/demo/train \
        --data runs/demo/prepared --n 64 --max-new-tokens 64 --repeat 2

Without --model it writes a tiny random Phi-3-vision with the demo's shapes (tiny tokenizer,
128-wide 4-layer decoder, 112-px crops, num_crops 1) to bench/out/generate/ and uses it. The
same model and the same --n photos (varied sizes) are answered, in the same run:
  1. batched, --batch-size photos a generate call, constrained (the default path);
  2. one photo a call, constrained: the baseline (what the recipe's batch-size-1 processor
     allows); the answers must equal the batched ones row by row (greedy);
  3. batched, free decoding (--no-constrained): the constraint's cost, per generated token
     (a random model's free answers never stop early, so totals alone would mislead), and
     the time spent inside the logits processor itself, which machine noise does not blur.
With --data the photos are the first --n of that prepared dataset's test split: a trained
model then answers in full with or without the constraint, and the wall-time ratio is the
constraint's whole cost (target <= 1.15x). Each batched figure is the best of --repeat runs,
constrained and free interleaved; the one-at-a-time baseline runs once (it averages over --n
calls by itself). Target: batched >= 4x the one-at-a-time answers/s on the CPU tiny model.
Timings on a shared machine are noisy: the load average is printed with them. Keep
--threads 1 there: on an oversubscribed CPU, torch's second thread makes each small op
wait for a core (16x slower, measured).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from productvlm.inference import Predictor  # noqa: E402

CATEGORIES = ["BAGS", "SCARVES", "COATS", "SHOES", "BELTS", "HATS"]
OUT = ROOT / "bench" / "out" / "generate"


def tiny_model_folder() -> Path:
    from productvlm.models.phi3v.tiny import save_tiny_model
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    folder = OUT / "tiny-phi3v"
    if not (folder / "model.safetensors").is_file():
        texts = [f"Product: {a} {b}, Category: {c}, Full Price: {i * 7 % 9 + 1},{i}90.00"
                 for i, (a, b, c) in enumerate(
                     (a, b, c) for a in ("Medium", "Small", "Check", "Vintage")
                     for b in ("Lola Bag", "Wool Scarf", "Trench Coat", "Leather Belt")
                     for c in CATEGORIES)]
        tok = train_tiny_tokenizer(texts * 5, vocab_size=768)
        save_tiny_model(folder, tokenizer=tok, num_crops=1)
    return folder


def photos(n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        w, h = 96 + 37 * (i % 7), 96 + 29 * (i % 5)
        img = Image.new("RGB", (w, h), (240, 238, 235))
        ImageDraw.Draw(img).rounded_rectangle((w * 0.2, h * 0.3, w * 0.8, h * 0.9), 5,
                                              fill=(30 * (i % 8), 90, 200 - 20 * (i % 9)))
        out.append(img)
    return out


def timed(predictor: Predictor, images: list[Image.Image], one_by_one: bool) -> tuple:
    predictor.tokens_generated, predictor.constraint_seconds = 0, 0.0
    t0 = time.perf_counter()
    if one_by_one:
        preds = [predictor.predict([im])[0] for im in images]
    else:
        preds = predictor.predict(images)
    return time.perf_counter() - t0, preds, predictor.tokens_generated, predictor.constraint_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None,
                    help="prepared dataset whose test photos to answer (default: drawn)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.model or tiny_model_folder()
    predictor = Predictor.load(folder, device="cpu", batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens,
                               categories=None if args.data else CATEGORIES)
    if args.data:
        from productvlm.prepared import load_prepared

        test = load_prepared(args.data, splits=("test",))["test"]
        images = [test[i]["image"].convert("RGB") for i in range(min(args.n, len(test)))]
        args.n = len(images)
    else:
        images = photos(args.n)
    predictor.predict(images[:2])  # warm-up: grammar masks, allocator, lazy imports
    print(f"model {folder}, {args.n} photos, batch {args.batch_size}, {args.threads} threads, "
          f"max_new_tokens {args.max_new_tokens}, load average {os.getloadavg()[0]:.1f}")

    best: dict[bool, tuple] = {}
    for _ in range(args.repeat):
        for constrained in (True, False):
            predictor.constrained = constrained
            run = timed(predictor, images, one_by_one=False)
            print(f"  {'constrained' if constrained else 'free'}: {run[0]:.2f} s")
            if constrained not in best or run[0] < best[constrained][0]:
                best[constrained] = run
    predictor.constrained = True
    t_batch, batched, tok_batch, t_mask = best[True]
    t_free, free, tok_free, _ = best[False]
    t_single, single, _, _ = timed(predictor, images, one_by_one=True)

    same = sum(a.raw == b.raw for a, b in zip(batched, single, strict=True))
    rows = [
        ("batched, constrained", t_batch, tok_batch, batched),
        ("one at a time, constrained", t_single, tok_batch, single),
        ("batched, free", t_free, tok_free, free),
    ]
    print(f"{'':28} {'seconds':>8} {'answers/s':>10} {'tokens':>7} {'ms/token':>9} {'parsed':>7}")
    for name, secs, toks, preds in rows:
        parsed = sum(p.ok for p in preds)
        print(f"{name:28} {secs:8.2f} {args.n / secs:10.2f} {toks:7d} "
              f"{1000 * secs / max(toks, 1):9.2f} {parsed:4d}/{len(preds)}")
    print(f"batched vs one at a time: {t_single / t_batch:.2f}x answers/s (target >= 4x); "
          f"identical answers {same}/{args.n}")
    per_tok_c, per_tok_f = t_batch / max(tok_batch, 1), t_free / max(tok_free, 1)
    print(f"constrained vs free, batched: {t_batch / t_free:.2f}x the wall time "
          f"(target <= 1.15x with --data), {per_tok_c / per_tok_f:.2f}x the time per "
          "generated token")
    steps = -(-args.n // args.batch_size) * args.max_new_tokens
    print(f"time inside the constraint (logits processor): {t_mask:.3f} s = "
          f"{1000 * t_mask / steps:.2f} ms per step of {args.batch_size} rows, "
          f"{100 * t_mask / t_batch:.1f}% of the constrained run")


if __name__ == "__main__":
    main()
