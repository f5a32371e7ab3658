"""Per model family: training samples/s at batch 8 and generation answers/s at batch 16.

Usage: .venv/bin/python bench/bench_families.py [--n 240] [--steps 20]
           [--run phi3v=runs/demo/train --run qwen2_5_vl=runs/demo-qwen/train ...]

Each family's tiny model at the demo's sizes (DemoConfig: decoder 128 wide x 3 layers,
image side 128 wide x 4 layers, 112-px images), a tokenizer trained on the same synth
catalog, the same collator, loop (bench_train.bare_loop: AdamW, full fine-tuning, gradient
clipping) and batch, measured in one
run; Phi-3-vision, the default, is the baseline of the ratios. Generation: the Predictor
(constrained, greedy, KV cache, left padding) on 64 test photos, 16 at a time; with
``--run FAMILY=RUN`` a trained run of that family answers (trained answers have their real
length; a random model's run to the token limit).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_train import bare_loop  # the same plain training loop (bench/ is on sys.path)

FAMILIES = ("phi3v", "qwen2_5_vl", "smolvlm", "phi4mm")


def answer_rate(model: str, data: Path, n: int = 64, batch: int = 16) -> tuple[float, float]:
    """(answers/s, mean answer tokens) of the Predictor on ``n`` test photos."""
    from productvlm.inference import Predictor
    from productvlm.prepared import load_prepared

    test = load_prepared(data)["test"]
    photos = [test[i % len(test)]["image"].convert("RGB") for i in range(n)]  # cycled
    predictor = Predictor.load(model, batch_size=batch, max_new_tokens=64)
    predictor.calibration = None  # answers only: the same work for every family
    predictor.predict(photos[:batch])  # warm-up
    predictor.tokens_generated = 0
    t0 = time.perf_counter()
    predictor.predict(photos)
    return n / (time.perf_counter() - t0), predictor.tokens_generated / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240, help="catalog rows")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--run", action="append", default=[], help="FAMILY=RUN_DIR")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.run)
    torch.set_num_threads(1)

    from productvlm.catalog.prepare import prepare
    from productvlm.demo import DemoConfig, tiny_base_model
    from productvlm.models.loading import load_model
    from productvlm.prepared import load_prepared
    from productvlm.synth.generate import synth

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cat = synth(root / "catalog", n=args.n, seed=0, overwrite=True)
        prepare(str(cat.parquet), root / "prepared", progress=False, verbose=False)
        train_split = load_prepared(root / "prepared")["train"]
        for family in FAMILIES:
            folder = tiny_base_model(DemoConfig(out=root / family, model_family=family),
                                     train_split)
            params = sum(p.numel() for p in load_model(folder).parameters())
            rate = bare_loop(root / "prepared", folder, args.steps, batch=8, warmup=3)
            answers, tokens = answer_rate(runs.get(family, str(folder)), root / "prepared")
            results[family] = {"params": params, "train_samples_per_s": round(rate, 1),
                               "answers_per_s": round(answers, 2),
                               "answer_tokens": round(tokens, 1)}
            print(family, json.dumps(results[family]), flush=True)
    base = results["phi3v"]
    print(f"\n{'family':<12}{'params':>10}{'train samples/s':>17}{'x phi3v':>9}"
          f"{'answers/s':>11}{'x phi3v':>9}{'tokens/answer':>15}")
    for family, r in results.items():
        print(f"{family:<12}{r['params']:>10,}{r['train_samples_per_s']:>17}"
              f"{r['train_samples_per_s'] / base['train_samples_per_s']:>9.2f}"
              f"{r['answers_per_s']:>11}{r['answers_per_s'] / base['answers_per_s']:>9.2f}"
              f"{r['answer_tokens']:>15}")


if __name__ == "__main__":
    main()
