"""The Python half of bench/gpu_check.sh: the full-size model's figures on a CUDA GPU, each
printed beside its target.

Usage: .venv/bin/python bench/gpu_check.py [--dry-run] [--hub DIR] [--work DIR]

On a GPU (random weights, nothing downloaded): the 4.2B Phi-3-vision is built directly in bf16
on the GPU and saved as a base folder; the sample catalog comes from `productvlm synth`. Then:
  1. LoRA steps through the training code path (load_model with the shipped LoRA config:
     r=64 on the decoder, frozen tower; VLMCollator batches) at num_crops 16: before (gradient
     checkpointing, padded batches, SDPA; batch 2 and 8), without checkpointing (batch 8),
     and after (training/memory.py's plan, packed batches with flex attention and, where it
     is installed, flash-attention-2; batch 8, 16 and the pass `micro_batch: auto` picks for
     the shipped 16-photo step): peak GPU memory, samples/s and MFU;
     the packed and padded losses of one batch compared;
  2. batch 8 against a loop of 8 batch-1 steps (num_crops 4);
  3. a QLoRA step (configs/burberry-phi3v-qlora.yaml: num_crops 4, batch 1);
  4. batched generation (inference.Predictor, constrained, num_crops 16): tokens/s at batch 16
     and one photo at a time;
  5. the batch engine (inference/batch.py, num_crops 16): answers and the audit's model work
     in photos/s at batch 16 and at the largest batch that fits (targets: 15 and 9 photos/s
     on an H200), and the constraint's cost per token (target <= 1.15x);
  6. `productvlm demo` on the GPU: its wall time.
MFU is the step's model FLOPs (flops.py: gradient checkpointing's recomputation not counted)
over the GPU's dense bf16 peak. --dry-run runs every section on the CPU with a tiny config
(the QLoRA section then prints why it cannot run), so the script is known to work up to the
CUDA calls.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from flops import lora_step_flops  # noqa: E402

KIT_HUB = ROOT.parent / "shared" / "phi3v-conformance" / "hub"
COOKBOOK_IMAGES_PER_S_PER_GPU = 12.1 / 8  # the cookbook's LoRA run: 12.1 images/s on 8 A100s
#: dense bf16 tensor-core peaks (TFLOP/s) by device name; --peak-tflops for others
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
               "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "L4": 121.0,
               "A10G": 70.0, "A10": 125.0, "4090": 165.0}
HUB_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json")


def gpu_peak(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


class Clock:
    """Wall time with the device synchronised, and peak memory since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        return torch.cuda.max_memory_allocated() / 1e9 if self.cuda else float("nan")


def build_base(args: argparse.Namespace, work: Path, device: torch.device) -> Path:
    """A random-weight model folder (bf16, Hub layout) with a processor: full size, or tiny."""
    from productvlm.models.merged import HUB_SHARD_SIZE
    from productvlm.models.phi3v import Phi3VConfig, Phi3VForCausalLM
    from productvlm.models.phi3v.hub_layout import WTE_COPY
    from productvlm.models.phi3v.tiny import save_tiny_model, tiny_config
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    base = work / "base"
    if args.dry_run:
        tok = train_tiny_tokenizer([f"Product: item {i}, Category: BAGS" for i in range(50)],
                                   400)
        cfg = tiny_config(len(tok), bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return save_tiny_model(base, config=cfg, tokenizer=tok, num_crops=16)
    if not (args.hub / "config.json").is_file():
        sys.exit(f"{args.hub}: needs the Hub's config.json and tokenizer files (no weights)")
    config = Phi3VConfig.from_pretrained(args.hub)
    start = time.perf_counter()
    with torch.device(device):
        model = Phi3VForCausalLM._from_config(config, dtype=torch.bfloat16)
    state = model.state_dict()
    state[WTE_COPY] = state["model.embed_tokens.weight"].clone()
    model.save_pretrained(base, state_dict=state, max_shard_size=HUB_SHARD_SIZE)
    for name in HUB_FILES:
        (base / name).write_bytes((args.hub / name).read_bytes())
    del model, state
    print(f"base: {config.num_hidden_layers}-layer decoder, random bf16 weights, built and "
          f"saved in {time.perf_counter() - start:.0f} s", flush=True)
    return base


def sample_rows(work: Path, n: int) -> list[dict[str, Any]]:
    from productvlm.catalog.prepare import prepare
    from productvlm.prepared import load_prepared
    from productvlm.synth.generate import synth

    cat = synth(work / "catalog", n=n, seed=0, fault_rate=0.0, overwrite=True)
    prepare(str(cat.parquet), work / "prepared", preset="burberry", seed=0,
            val_fraction=0.0, test_fraction=0.0)
    return list(load_prepared(work / "prepared")["train"])


def train_cfg(config_file: str, base: Path, **overrides: Any) -> Any:
    from productvlm.config import resolve_config
    from productvlm.training.config import TrainConfig

    flags = {"model": str(base), "precision": "bf16", "report_to": "none", **overrides}
    return resolve_config(TrainConfig, ROOT / "configs" / config_file, flags, section="train")


def time_steps(model: Any, batches: list[dict], clock: Clock, warmup: int = 2,
               steps: int = 3, packer: Any = None) -> float:
    """Seconds per optimizer step (forward, backward, AdamW) over ``steps`` timed steps;
    ``packer`` packs each batch first (training/packing.py), as the Trainer's step does."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=clock.cuda)
    device = next(model.parameters()).device

    def step(batch: dict) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
        if packer is not None:
            batch = packer(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for i in range(warmup):
        step(batches[i % len(batches)])
    clock.sync()
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    clock.sync()
    return (time.perf_counter() - start) / steps


def lora_section(base: Path, rows: list, clock: Clock, device: torch.device,
                 peak: float | None, out: dict) -> None:
    """LoRA steps before (the config as shipped before: gradient checkpointing on, padded
    batches, SDPA) and after (training/memory.py's plan: checkpointing only where the step
    does not fit; packed batches with flex attention, whose kernel computes only each
    sample's block), at num_crops 16."""
    from productvlm.models.loading import load_model
    from productvlm.models.processors import load_processor
    from productvlm.training.collate import VLMCollator
    from productvlm.training.memory import plan_step
    from productvlm.training.packing import Packer

    target = 4 * COOKBOOK_IMAGES_PER_S_PER_GPU
    # (name, attention, packing, checkpointing: True / "auto", batches)
    variants = [("before", "sdpa", False, True, (2, 8)),
                ("no checkpointing", "sdpa", False, "auto", (8, "fill")),
                ("after", "flex_attention", True, "auto", (8, 16, "fill"))]
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            variants.append(("after, flash-attention-2", "flash_attention_2", True, "auto",
                             (8, 16)))
        except ImportError:
            print("flash-attention-2: not installed; flex attention and SDPA only")
        try:
            import liger_kernel  # noqa: F401

            variants.append(("after, Liger", "flex_attention", True, "auto", (8,)))
        except ImportError:
            print("liger-kernel: not installed; no Liger variant (bench/gpu_wheels.py brings it)")
    else:  # flex attention has no backward on a CPU
        variants = [v for v in variants if v[1] != "flex_attention"]
    processor = load_processor(base, num_crops=16)
    losses: dict[str, float] = {}
    for name, attn, packing, checkpointing, sizes in variants:
        cfg = train_cfg("burberry-phi3v-lora.yaml", base, attn_implementation=attn,
                        packing=packing, gradient_checkpointing=checkpointing, num_crops=16)
        clock.reset()
        try:
            model = load_model(base, cfg=cfg).to(device)
        except Exception as err:  # noqa: BLE001 (a kernel that does not load: say, go on)
            print(f"LoRA {name} ({attn}): did not load: {str(err).splitlines()[0]}")
            continue
        if "Liger" in name:
            from productvlm.models.kernels import apply_liger

            try:
                print(f"  {apply_liger(model, device)}", flush=True)
            except Exception as err:  # noqa: BLE001
                print(f"LoRA {name}: Liger did not apply: {str(err).splitlines()[0]}")
                continue
        lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
        collate = VLMCollator(processor, cfg.target_format, cfg.question, cfg.max_length)
        packer = Packer(model) if packing else None
        for size in sizes:
            if size == "fill":  # the shipped step (batch_size x grad_accum) as train splits it
                plan = plan_step(model, collate, rows, cfg, device)
                bs = plan.micro_batch
                print(f"  micro_batch auto, the shipped step: {plan.message}", flush=True)
                if bs in sizes:  # measured just above
                    print(f"  -> passes of {bs}: the batch-{bs} figures above", flush=True)
                    continue
            else:
                bs = int(size)
                plan = plan_step(model, collate, rows, cfg.model_copy(update={
                    "batch_size": bs, "grad_accum": 1, "micro_batch": bs}), device)
            if checkpointing == "auto":
                if size != "fill":
                    print(f"  plan at batch {size}: {plan.message}", flush=True)
                if plan.checkpointing:
                    model.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    model.activation_checkpointing_disable()
            batches = [collate(rows[i * bs:(i + 1) * bs]) for i in range(2)]
            first = {k: v.to(device) for k, v in batches[0].items()}
            clock.reset()
            try:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                    model.eval()
                    first["pixel_values"] = first["pixel_values"].to(torch.bfloat16)
                    losses[f"{name} b{bs}"] = float(model(**(packer(first) if packer
                                                             else first)).loss)
                seconds = time_steps(model, batches, clock, packer=packer)
            except Exception as err:  # noqa: BLE001 (out of memory, a kernel that fails: say)
                print(f"LoRA {name}, batch {bs}: failed: {str(err).splitlines()[0][:300]}",
                      flush=True)
                clock.reset()
                continue
            flops = sum(lora_step_flops(model.config, b, lora) for b in batches) / 2
            mfu = flops / seconds / peak if peak else float("nan")
            rate = bs / seconds
            out[f"lora_{attn}_{'packed' if packing else 'padded'}_b{size}"] = {
                "samples_per_s": rate, "mfu": mfu, "peak_gb": clock.peak_gb()}
            real = int(batches[0]["attention_mask"].sum()) // bs
            print(f"LoRA r=64 {name} ({attn}, {'packed' if packing else 'padded'}, "
                  f"checkpointing {'on' if plan.checkpointing else 'off'}), num_crops 16, "
                  f"batch {bs} ({real} tokens/photo): {rate:.2f} samples/s, "
                  f"{flops / 1e12:.3g} TFLOP/step, MFU {mfu:.1%}, peak GPU memory "
                  f"{clock.peak_gb():.1f} GB; target >= 40% MFU, >= 8.7 samples/s (the "
                  f"cookbook x4: {target:.2f})", flush=True)
        if name == "before":  # batch 8 against a loop of batch-1 steps, on the same photos
            small = VLMCollator(load_processor(base, num_crops=4), cfg.target_format,
                                cfg.question, cfg.max_length)
            one = [small(rows[i:i + 1]) for i in range(8)]
            loop = time_steps(model, one, clock, warmup=2, steps=8) * 8
            batched = time_steps(model, [small(rows[:8])], clock)
            out["batch8_vs_loop"] = loop / batched
            print(f"num_crops 4: batch 8 {8 / batched:.2f} samples/s, loop of 8 batch-1 steps "
                  f"{8 / loop:.2f} samples/s: {loop / batched:.1f}x (target >= 3x)", flush=True)
        del model
        clock.reset()
    for other in ("after b8", "after, flash-attention-2 b8", "after, Liger b8"):
        if "before b8" in losses and other in losses:
            gap = abs(losses[other] - losses["before b8"]) / abs(losses["before b8"])
            print(f"loss of batch 8, {other[:-3]} vs before (padded, SDPA; bf16): "
                  f"{losses[other]:.4f} vs {losses['before b8']:.4f} (relative gap {gap:.1e}; "
                  "bf16 rounding: expect < 1e-2)", flush=True)


def qlora_section(base: Path, rows: list, clock: Clock, device: torch.device,
                  out: dict) -> None:
    from productvlm.errors import ProductVLMError
    from productvlm.models.loading import load_model
    from productvlm.models.processors import load_processor
    from productvlm.training.collate import VLMCollator

    cfg = train_cfg("burberry-phi3v-qlora.yaml", base)
    clock.reset()
    try:
        model = load_model(base, cfg=cfg)
    except ProductVLMError as e:
        print(f"QLoRA step: not run: {e}")
        return
    collate = VLMCollator(load_processor(base, num_crops=cfg.num_crops), cfg.target_format,
                            cfg.question, cfg.max_length)
    batches = [collate(rows[i:i + cfg.batch_size]) for i in range(2)]
    seconds = time_steps(model, batches, clock)
    out["qlora"] = {"samples_per_s": cfg.batch_size / seconds, "peak_gb": clock.peak_gb()}
    print(f"QLoRA r=64 NF4, num_crops {cfg.num_crops}, batch {cfg.batch_size}: "
          f"{cfg.batch_size / seconds:.2f} samples/s, peak GPU memory {clock.peak_gb():.1f} GB "
          "(configs/burberry-phi3v-qlora.yaml's comment: see it)", flush=True)
    del model
    clock.reset()


def generation_section(base: Path, rows: list, clock: Clock, device: torch.device,
                       out: dict) -> None:
    from productvlm.inference import Predictor
    from productvlm.models.loading import load_model
    from productvlm.models.processors import load_processor

    model = load_model(base, dtype="bf16").to(device).eval()
    predictor = Predictor(model, load_processor(base, num_crops=16), batch_size=16,
                          max_new_tokens=32, categories=sorted({r["category"] for r in rows}))
    images = [r["image"].convert("RGB") for r in rows[:16]]
    predictor.generate(images[:2])  # warm-up
    rates = {}
    for name, chunks in (("batch 16", [images]), ("one at a time", [[im] for im in images[:4]])):
        predictor.tokens_generated = 0
        clock.sync()
        start = time.perf_counter()
        for chunk in chunks:
            predictor.generate(chunk)
        clock.sync()
        rates[name] = predictor.tokens_generated / (time.perf_counter() - start)
    out["generate_tokens_per_s"] = rates
    print(f"constrained generation, num_crops 16: {rates['batch 16']:.1f} tokens/s at batch 16, "
          f"{rates['one at a time']:.1f} one photo at a time "
          f"({rates['batch 16'] / rates['one at a time']:.1f}x)", flush=True)
    del model, predictor
    clock.reset()


def engine_section(base: Path, rows: list, clock: Clock, device: torch.device, out: dict,
                   budget_s: float) -> None:
    """Photos/s through the batch engine (inference/batch.py) at num_crops 16: constrained
    answers at batch 16 and at the largest batch that fits, the audit's model work (the
    listing's prices scored on the price grid), and the constraint's cost per token."""
    from productvlm.evaluation.calibrate import price_grid
    from productvlm.inference import Predictor
    from productvlm.inference.batch import Row, answer_rows
    from productvlm.models.loading import load_model
    from productvlm.models.processors import load_processor

    start = time.perf_counter()
    model = load_model(base, dtype="bf16").to(device).eval()
    predictor = Predictor(model, load_processor(base, num_crops=16), batch_size=16,
                          max_new_tokens=64, categories=sorted({r["category"] for r in rows}))
    images = [r["image"].convert("RGB") for r in rows]
    grid = price_grid([r["price"] for r in rows])

    def rate(batch: int, n: int, constrained: bool = True, audit: bool = False) -> tuple:
        predictor.batch_size, predictor.constrained = batch, constrained
        predictor.tokens_generated = 0
        todo = [Row(i, images[i % len(images)],
                    (rows[i % len(rows)]["title"], rows[i % len(rows)]["category"])
                    if audit else None) for i in range(n)]
        clock.sync()
        t0 = time.perf_counter()
        for _ in answer_rows(todo, predictor, grid=grid if audit else None,
                             answer_prices=not audit):
            pass
        clock.sync()
        seconds = time.perf_counter() - t0
        return n / seconds, seconds / max(predictor.tokens_generated, 1)

    rate(2, 2)  # warm-up: grammar masks, kernels
    answers, per_token_c = rate(16, 32)
    _, per_token_f = rate(16, 32, constrained=False)
    profile_decode(lambda constrained: rate(16, 16, constrained=constrained))
    try:  # the KV cache allocated once; on CUDA transformers then compiles the decode step
        if time.perf_counter() - start > budget_s * 0.3:
            raise RuntimeError("skipped: too little of the section's time left to compile")
        predictor.cache = "static"
        rate(16, 16)  # compiles
        static, _ = rate(16, 32)
        print(f"  static KV cache (compiled decode step): {static:.2f} photos/s at batch 16 "
              f"against {answers:.2f} dynamic ({static / answers:.2f}x; make it the default "
              "if > 1.1x)", flush=True)
        out["engine_static_cache_x"] = static / answers
    except Exception as err:  # noqa: BLE001 (a model transformers cannot compile: say)
        print(f"  static KV cache: failed: {str(err).splitlines()[0][:300]}", flush=True)
    finally:
        predictor.cache = "dynamic"
    audit, _ = rate(16, 32, audit=True)
    best = (16, answers)
    for batch in (32, 64, 128):
        if time.perf_counter() - start > budget_s * 0.6:
            break
        try:
            best = max(best, (batch, rate(batch, batch)[0]), key=lambda b: b[1])
        except torch.OutOfMemoryError:
            break
        finally:
            clock.reset()
    from productvlm.inference.sizing import answer_batch_size
    from productvlm.prompts import QUESTION

    auto, why = answer_batch_size(model, predictor.processor, max_new_tokens=64,
                                  question=QUESTION)
    print(f"  {why}", flush=True)
    try:
        auto_rate = rate(auto, auto)[0]
        out["engine_auto"] = {"batch": auto, "answers": auto_rate}
        print(f"  batch size auto ({auto}): answers {auto_rate:.2f} photos/s", flush=True)
        best = max(best, (auto, auto_rate), key=lambda b: b[1])
    except torch.OutOfMemoryError:
        print(f"  batch size auto ({auto}): out of memory: the estimate is too low", flush=True)
    finally:
        clock.reset()
    audit_best, _ = rate(best[0], best[0], audit=True)
    out["engine"] = {"answers_16": answers, "audit_16": audit, "best_batch": best[0],
                     "answers_best": best[1], "audit_best": audit_best,
                     "constrained_per_token_x": per_token_c / per_token_f}
    print(f"batch engine, num_crops 16: answers {answers:.2f} photos/s at batch 16, "
          f"{best[1]:.2f} at batch {best[0]} (target >= 15); audit {audit:.2f} photos/s at "
          f"batch 16, {audit_best:.2f} at batch {best[0]} (target >= 9); constrained vs free "
          f"{per_token_c / per_token_f:.2f}x per token (target <= 1.15x)", flush=True)


def vllm_section(base: Path, rows: list, out: dict) -> None:
    """--engine vllm at num_crops 16 on the same full-size Phi-3-vision (random weights):
    constrained answers, photos/s, beside the hf engine's figure of the section above. Needs
    vLLM installed on the machine (its CUDA wheel, ~240 MB, is over what a run can carry)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        print("vllm: not installed on this machine, skipped (pip install vllm there; its "
              "CUDA wheel, ~240 MB, cannot be carried in .whl/)", flush=True)
        return
    from productvlm.inference.vllm_engine import Source, VllmPredictor, start_llm
    from productvlm.models.processors import load_processor

    t0 = time.perf_counter()
    source = Source(str(base), None, 0, "the full-size base")
    try:
        llm = start_llm(source, dtype="bfloat16", num_crops=16)
    except Exception as err:  # noqa: BLE001 (say what vLLM lacks, then go on)
        print(f"vllm: cannot serve the base: {str(err).splitlines()[0][:300]}", flush=True)
        return
    started = time.perf_counter() - t0
    predictor = VllmPredictor(llm, load_processor(base, num_crops=16), source,
                              batch_size=256, max_new_tokens=64,
                              categories=sorted({r["category"] for r in rows}))
    images = [r["image"].convert("RGB") for r in rows]
    predictor.predict(images[:8])  # warm-up
    n = 256
    t0 = time.perf_counter()
    predictor.predict([images[i % len(images)] for i in range(n)])
    rate = n / (time.perf_counter() - t0)
    hf = out.get("engine", {}).get("answers_best")
    out["vllm"] = {"start_s": started, "answers": rate}
    print(f"vllm engine, num_crops 16: start {started:.0f} s; answers {rate:.2f} photos/s at "
          f"{n} photos a call (target >= 21, 10x the 2.1 of before, and >= 30); hf engine "
          f"{hf if hf is None else round(hf, 2)} photos/s"
          + (f" ({rate / hf:.1f}x)" if hf else ""), flush=True)


def profile_decode(run: Any) -> None:
    """Where a batch's time goes, constrained and free (torch.profiler, host side): the ops
    that take the most host time, and how often the host waited on the device. It says what
    the constraint costs per step beyond the logits processor's own counted time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for constrained in (True, False):
        with profile(activities=activities) as prof:
            run(constrained)
        events = prof.key_averages()
        # the CUDA runtime's blocking calls (cudaStreamSynchronize, cudaEventSynchronize...)
        waits = sum(e.count for e in events if "Synchronize" in e.key)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
        print(f"  profile, {'constrained' if constrained else 'free'} batch of 16: host waits "
              f"on the device {waits} times; most host time: " + ", ".join(
                  f"{e.key} {e.self_cpu_time_total / 1e3:.0f} ms x{e.count}" for e in top),
              flush=True)


def demo_section(work: Path, dry_run: bool, timeout: float, out: dict) -> None:
    args = [sys.executable, "-m", "productvlm.cli", "demo", "--out", str(work / "demo"),
            "--report-to", "none"]
    if dry_run:
        small = work / "demo-small.yaml"
        small.write_text("demo:\n  n: 60\n  epochs: 1\n  vision_warmup_epochs: 1\n")
        args += ["--config", str(small)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        print(f"demo: still running after {timeout:.0f} s (the time left); stopped")
        return
    seconds = time.perf_counter() - start
    out["demo_s"] = seconds
    checks = [x for x in proc.stdout.splitlines() if x.startswith(("PASS", "MISS"))]
    where = "the CPU (dry run, small)" if dry_run else "the GPU machine (its CPU: the default)"
    print(f"demo on {where}: "
          f"{seconds / 60:.1f} min wall, exit {proc.returncode} (target: not slower than 2 "
          "CPU cores, ~7.2 min); "
          + "; ".join(checks), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--hub", type=Path, default=KIT_HUB,
                        help="the Hub's config.json and tokenizer files (no weights needed)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/productvlm-gpu-check"))
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak, if not in the table")
    parser.add_argument("--budget-s", type=float, default=420, help="time for all sections")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run to check the script on a CPU")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    peak = gpu_peak(name, args.peak_tflops)
    print(f"device: {name}; dense bf16 peak: "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (--peak-tflops)'}; torch "
          f"{torch.__version__}", flush=True)
    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.work.mkdir(parents=True, exist_ok=True)
    clock, out = Clock(device), {}
    base = build_base(args, args.work, device)
    rows = sample_rows(args.work, 32)  # two batches of 16
    sections = [("LoRA steps", lambda: lora_section(base, rows, clock, device, peak, out)),
                ("QLoRA step", lambda: qlora_section(base, rows, clock, device, out)),
                ("generation", lambda: generation_section(base, rows, clock, device, out)),
                ("batch engine", lambda: engine_section(
                    base, rows, clock, device, out,
                    args.budget_s - (time.perf_counter() - started))),
                ("vLLM engine", lambda: vllm_section(base, rows, out))]
    for title, section in sections:
        left = args.budget_s - (time.perf_counter() - started)
        print(f"--- {title} ({left:.0f} s of the budget left)", flush=True)
        section()
        clock.reset()  # what a section held goes back before the next (the demo's process)
    left = args.budget_s - (time.perf_counter() - started)
    print(f"--- demo ({left:.0f} s of the budget left)", flush=True)
    demo_section(args.work, args.dry_run, left, out)
    print(f"gpu_check.py done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
