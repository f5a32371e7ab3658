"""Training throughput: `productvlm train` (Trainer path) against a bare PyTorch loop.

Usage: .venv/bin/python bench/bench_train.py [--n 240] [--steps 30] [--batch 8]
       .venv/bin/python bench/bench_train.py --packing [--n 240] [--batch 8]

Same tiny Phi-3-vision, same prepared data, same collator, batch and optimizer (AdamW, constant
lr, full fine-tuning, no evaluation, no checkpoints), measured in the same run. Prints
samples/s of each and the ratio; target: the Trainer path within 10% of the bare loop.
Also prints the wall time and peak memory of the whole training call.

--packing: what padding-free batches (training/packing.py) save on the demo's catalog: the
tokens computed per photo packed and padded over the training split's batches at num_crops
1, 4 and 16, and the demo's tiny model's step time (forward, backward, AdamW) padded
against packed, both with SDPA (on a CPU flex attention has no backward; the GPU's figures
come from bench/gpu_check.sh), in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def make_data(tmp: Path, n: int) -> tuple[Path, Path]:
    from productvlm.catalog.prepare import prepare
    from productvlm.demo import DemoConfig, tiny_base_model
    from productvlm.prepared import load_prepared
    from productvlm.synth.generate import synth

    cat = synth(tmp / "catalog", n=n, seed=0, overwrite=True)
    prepare(str(cat.parquet), tmp / "prepared", progress=False, verbose=False)
    model = tiny_base_model(DemoConfig(out=tmp), load_prepared(tmp / "prepared")["train"])
    return tmp / "prepared", model


def bare_loop(data: Path, model_dir: Path, steps: int, batch: int, warmup: int) -> float:
    """Samples/s of a plain loop (forward, backward, clip, AdamW) after ``warmup`` steps, for
    a model of any family (bench_families.py uses it too)."""
    from torch.utils.data import DataLoader

    from productvlm.models.loading import load_model
    from productvlm.models.processors import load_processor
    from productvlm.prepared import load_prepared
    from productvlm.training.collate import VLMCollator

    torch.manual_seed(0)
    ds = load_prepared(data)["train"]
    model = load_model(model_dir, dtype="fp32").train()
    processor = load_processor(model_dir, num_crops=1)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                        collate_fn=VLMCollator(processor, max_length=256))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    done, t0 = 0, 0.0
    while done < steps + warmup:
        for batch_in in loader:
            if done == warmup:
                t0 = time.perf_counter()
            loss = model(**batch_in).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps + warmup:
                break
    return steps * batch / (time.perf_counter() - t0)


def trainer_path(data: Path, model_dir: Path, out: Path, steps: int, batch: int,
                 warmup: int) -> tuple[float, float]:
    from productvlm.training.config import TrainConfig
    from productvlm.training.trainer import train

    cfg = TrainConfig(model=str(model_dir), data=data, out=out, mode="full",
                      freeze_vision=False, gradient_checkpointing=False, precision="fp32",
                      num_crops=1, max_length=256, learning_rate=5e-4, lr_scheduler="constant",
                      warmup_ratio=0.0, max_steps=steps + warmup, batch_size=batch,
                      logging_steps=1, eval_steps=10_000, save_steps=10_000, eval_samples=0,
                      report_to="none", merge=False)
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    rates = [e["samples_per_second"] for e in log if "samples_per_second" in e][warmup:]
    return sum(rates) / len(rates), wall


def packing_figures(data: Path, model_dir: Path, batch: int, steps: int, warmup: int) -> None:
    """Tokens per photo packed vs padded at num_crops 1/4/16; step time padded vs packed."""
    from productvlm.models.loading import load_model
    from productvlm.models.processors import load_processor
    from productvlm.prepared import load_prepared
    from productvlm.training.collate import VLMCollator
    from productvlm.training.packing import Packer, tokens_per_step

    rows = list(load_prepared(data)["train"])
    cut = [rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    for crops in (1, 4, 16):
        collate = VLMCollator(load_processor(model_dir, num_crops=crops), max_length=8192)
        real = padded = 0
        for chunk in cut:
            r, p = tokens_per_step(collate(chunk))
            real, padded = real + r, padded + p
        n = len(cut) * batch
        print(f"num_crops {crops:2d}, batch {batch}: {real / n:7.1f} tokens/photo packed, "
              f"{padded / n:7.1f} padded: padding is {1 - real / padded:.1%} of the work")
    collate = VLMCollator(load_processor(model_dir, num_crops=4), max_length=8192)
    batches = [collate(chunk) for chunk in cut[:steps]]
    model = load_model(model_dir, dtype="fp32").train()
    packer = Packer(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def seconds(packed: bool) -> float:
        total = 0.0
        for i, b in enumerate(batches[:warmup] + batches):
            t0 = time.perf_counter()
            model(**(packer(b) if packed else b)).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += (time.perf_counter() - t0) * (i >= warmup)
        return total / len(batches)

    padded_s, packed_s = seconds(False), seconds(True)
    print(f"tiny model step, num_crops 4, batch {batch}, SDPA: padded {padded_s * 1e3:.0f} ms, "
          f"packed {packed_s * 1e3:.0f} ms: packed / padded {packed_s / padded_s:.2f} (SDPA's "
          "mask is dense over a packed row; packing: auto packs only with flash/flex kernels)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--packing", action="store_true", help="the packing figures instead")
    args = ap.parse_args()
    if args.packing:
        with tempfile.TemporaryDirectory() as tmp:
            data, model_dir = make_data(Path(tmp), args.n)
            print(f"torch threads: {torch.get_num_threads()}; the demo's catalog ({args.n} "
                  "products) and tiny model")
            packing_figures(data, model_dir, args.batch, args.steps, args.warmup)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data, model_dir = make_data(Path(tmp), args.n)
        bare = bare_loop(data, model_dir, args.steps, args.batch, args.warmup)
        ours, wall = trainer_path(data, model_dir, Path(tmp) / "run", args.steps, args.batch,
                                  args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch threads: {torch.get_num_threads()}; batch {args.batch}; "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"bare PyTorch loop:      {bare:8.2f} samples/s")
    print(f"productvlm train path:  {ours:8.2f} samples/s")
    print(f"ratio (train / bare):   {ours / bare:8.3f}   target >= 0.90")
    print(f"train() wall time {wall:.1f} s; peak RSS of this process {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
