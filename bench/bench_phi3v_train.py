"""Training throughput of the native Phi-3-vision: batched vs one sample at a time.

Usage: .venv/bin/python bench/bench_phi3v_train.py [--threads 2] [--samples 32] [--rounds 2]

CPU section (always): the tiny config (112-px crops, 4-layer CLIP, 4-layer decoder), full
fine-tuning with AdamW, on 8 different products whose photos have mixed sizes and aspect
ratios (so their image-token counts differ and right padding is real). It times training steps
over the same samples as batches of 8 and as a loop of batch-1 steps, and prints samples/s for
both and their ratio (the reference processor forces batch 1; the target is >= 3x). Inputs are
built by the processor before timing: the figures are model steps (forward, backward, update).

Shared-view section (CPU): a photo that fits one crop has a global view equal to its crop, so
the image side encodes it once. It times the image side's forward and backward on batches of 8
such photos as they come and with each crop nudged by 1e-6 (two tower passes, as before the
change), and prints both and their ratio.

GPU section (only with CUDA, else "skipped: no CUDA"): the full-size architecture with random
weights in bf16, LoRA r=64 on the decoder, gradient checkpointing, on 800x1000 photos at
num_crops 4 and 16: peak memory and samples/s of a training step.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from productvlm.models.loading import LoraSpec, lora_target_regex
from productvlm.models.phi3v import Phi3VConfig, Phi3VForCausalLM
from productvlm.models.phi3v.image_processing import Phi3VImageProcessor
from productvlm.models.phi3v.processing import Phi3VProcessor
from productvlm.models.phi3v.tiny import tiny_config, tiny_model
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
PRODUCTS = [
    ("Check Cotton Trench Coat", "COATS", "2,290.00", (640, 480)),
    ("Medium Lola Bag", "BAGS", "2,650.00", (300, 900)),
    ("Vintage Check Cashmere Scarf", "SCARVES", "590.00", (336, 336)),
    ("Leather Ankle Boots", "SHOES", "1,150.00", (1200, 200)),
    ("Small Beige Check Scarf", "SCARVES", "450.00", (50, 40)),
    ("Quilted Thermoregulated Jacket", "JACKETS", "1,890.00", (800, 1000)),
    ("Logo Print Cotton T-shirt", "T-SHIRTS", "390.00", (500, 500)),
    ("Monogram Leather Belt", "BELTS", "620.00", (200, 600)),
]


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def answer(title: str, category: str, price: str) -> str:
    return f"Product: {title}, Category: {category}, Full Price: {price}<|end|>"


def cpu_section(samples: int, rounds: int) -> None:
    texts = [answer(*p[:3]) for p in PRODUCTS]
    tok = train_tiny_tokenizer(texts * 4, 400)
    cfg = tiny_config(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    images = Phi3VImageProcessor(num_crops=4, crop_size=cfg.crop_size,
                                 num_img_tokens=cfg.num_img_tokens)
    processor = Phi3VProcessor(images, tok)
    rows = [(photo(PRODUCTS[i % 8][3], i), texts[i % 8]) for i in range(samples)]

    def make(chunk):
        return processor(text=[PROMPT] * len(chunk), images=[[im] for im, _ in chunk],
                         targets=[t for _, t in chunk], padding_side="right")

    batches = {
        8: [make(rows[i:i + 8]) for i in range(0, samples, 8)],
        1: [make(rows[i:i + 1]) for i in range(samples)],
    }
    tokens = [int(b["attention_mask"].sum()) for b in batches[1]]
    print(f"tiny config: crop {cfg.crop_size}, CLIP {cfg.vision_config.hidden_size}x"
          f"{cfg.vision_config.num_hidden_layers}, decoder {cfg.hidden_size}x"
          f"{cfg.num_hidden_layers}, vocab {cfg.vocab_size}; {samples} samples of "
          f"{min(tokens)}-{max(tokens)} tokens; threads {torch.get_num_threads()}")

    rates = {}
    for bs, inputs in batches.items():
        model = tiny_model(cfg, seed=0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4)

        def step(batch, model=model, opt=opt):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step(inputs[0])  # warm-up: allocator, kernels
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for batch in inputs:
                step(batch)
            best = min(best, time.perf_counter() - start)
        rates[bs] = samples / best
        print(f"batch {bs}: {rates[bs]:.1f} samples/s ({best:.2f} s for {samples} samples)")
    print(f"ratio batch 8 / batch-1 loop: {rates[8] / rates[1]:.2f}x (target >= 3x)")
    gemm_ceiling(cfg, batches[8], rates)


def gemm_ceiling(cfg: Phi3VConfig, batches: list, rates: dict[int, float]) -> None:
    """How fast any batching could be here: the step's FLOPs at this CPU's matmul speed.

    Batching pays on a GPU because small matmuls leave it idle; a CPU core runs even the
    batch-1 matmuls near its peak, so batching can only remove per-step overhead (Python,
    kernel launches, the optimizer step). The ceiling is the batch-1 loop's time per sample
    over the time the step's FLOPs take at the best rate measured for the model's own matmul.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model(cfg, seed=0).train()
    samples = flops = 0
    for batch in batches:
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
        flops += counter.get_total_flops()
        samples += batch["input_ids"].shape[0]
    rows = int(batches[0]["attention_mask"].sum())
    a, b = torch.randn(rows, cfg.hidden_size), torch.randn(cfg.hidden_size, 4 * cfg.hidden_size)
    best = float("inf")
    for _ in range(50):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    rate = 2 * a.shape[0] * a.shape[1] * b.shape[1] / best
    floor = flops / samples / rate  # seconds per sample with every FLOP at that rate
    print(f"GEMM ceiling: {flops / samples / 1e9:.2f} GFLOP per sample (forward + backward), "
          f"matmul peak here {rate / 1e9:.0f} GFLOP/s -> at best {1 / floor:.0f} samples/s, "
          f"i.e. at most {(1 / floor) / rates[1]:.2f}x the batch-1 loop; batch 8 reaches "
          f"{rates[8] * floor:.0%} of that speed")


def lora_step_figures(cfg: Phi3VConfig, device: str, batch_size: int = 2, steps: int = 5,
                      crops: tuple[int, ...] = (4, 16)) -> None:
    """Peak memory and samples/s of a bf16 LoRA training step (gradient checkpointing on)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3VForCausalLM(cfg).to(torch.bfloat16)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    spec = LoraSpec(r=64, alpha=128)
    model = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.05,
                                             target_modules=lora_target_regex(cfg, spec)))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cuda = device.startswith("cuda")
    v = cfg.vocab_size
    for num_crops in crops:
        images = Phi3VImageProcessor(num_crops=num_crops, crop_size=cfg.crop_size,
                                     num_img_tokens=cfg.num_img_tokens)
        vision = images([photo((800, 1000), i) for i in range(batch_size)])
        # <s> <|user|> \n [image] \n question <|end|> \n <|assistant|> \n, then a 32-token answer
        prompt = [1, 32010 % v, 29871 % v, 13]
        text = [t % v for t in (13, 5618, 338, 4318, 297, 445, 1967, 29973, 32007, 29871, 13,
                                32001, 29871, 13)]
        target = [t % v for t in range(1000, 1032)] + [32007 % v]
        seqs = [prompt + [-1] * n + text + target for n in vision["num_img_tokens"]]
        ids = torch.tensor(seqs, device=device)
        labels = ids.clone()
        labels[:, : -len(target)] = -100
        batch = {"input_ids": ids, "labels": labels,
                 "pixel_values": vision["pixel_values"].to(device, torch.bfloat16),
                 "image_sizes": vision["image_sizes"].to(device)}

        def step(batch=batch):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):  # warm-up
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a (CPU)"
        name = torch.cuda.get_device_name() if cuda else "CPU"
        print(f"{name}: LoRA r64 bf16, num_crops {num_crops}, batch {batch_size} x {ids.shape[1]} "
              f"tokens: {steps * batch_size / elapsed:.2f} samples/s, "
              f"{steps * ids.numel() / elapsed:.0f} tokens/s, peak memory {peak}")


def shared_view_section(rounds: int) -> None:
    cfg = tiny_config(400)
    images = Phi3VImageProcessor(num_crops=1, crop_size=cfg.crop_size,
                                 num_img_tokens=cfg.num_img_tokens)
    batches = [images([photo((300, 400), 8 * b + i) for i in range(8)]) for b in range(4)]
    nudged = []
    for batch in batches:
        pv = batch["pixel_values"].clone()
        pv[:, 1, 0, 0, 0] += 1e-6
        nudged.append({"pixel_values": pv, "image_sizes": batch["image_sizes"]})
    side = tiny_model(cfg, seed=0).train().model.vision_embed_tokens
    seconds = {}
    for name, inputs in (("shared view once", batches), ("two passes", nudged)):
        best = float("inf")
        for _ in range(rounds + 1):  # the first round warms up
            start = time.perf_counter()
            for batch in inputs:
                tokens = side(batch["pixel_values"], batch["image_sizes"])
                torch.cat(tokens).square().mean().backward()
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
        print(f"image side, {name}: {32 / best:.1f} one-crop photos/s (forward + backward)")
    print(f"shared view speed-up: {seconds['two passes'] / seconds['shared view once']:.2f}x")


def gpu_section() -> None:
    if not torch.cuda.is_available():
        print("GPU section: skipped: no CUDA")
        return
    # the real 4.2B architecture (CLIP ViT-L/14-336 + Phi-3-mini), random weights
    lora_step_figures(Phi3VConfig(), "cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_cpu:
        cpu_section(args.samples, args.rounds)
        shared_view_section(args.rounds)
    gpu_section()


if __name__ == "__main__":
    main()
