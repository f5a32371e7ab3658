"""Processor throughput for the real Phi-3-vision preprocessing (num_crops 16, 336 px crops).

Usage: .venv/bin/python bench/bench_processor.py [--images 16] [--threads 1] [--repeats 3]

Prints images/s of Phi3VImageProcessor on 800x1000 photos against a straightforward
reference-style pipeline (the reference's steps, one tensor op after another) measured in
the same run, and one batched processor call over 8 prompts against 8 single calls.
Uses the real tokenizer from ../shared/phi3v-conformance/hub when present, else a tiny one.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from productvlm.models.phi3v.image_processing import Phi3VImageProcessor
from productvlm.models.phi3v.processing import Phi3VProcessor

HUB = Path(__file__).resolve().parents[1].parent / "shared" / "phi3v-conformance" / "hub"
PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


def product_photo(seed: int, width: int = 800, height: int = 1000) -> Image.Image:
    """A photo-like test image: smooth shading plus sensor noise (JPEG-decoded photos are
    RGB uint8 like this; content does not change the work done)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 128 + 60 * np.sin(x / 70 + seed) * np.cos(y / 90)
    img = base[..., None] + rng.normal(0, 12, (height, width, 3)) + rng.uniform(-40, 40, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def reference_style(images: list[Image.Image], num_crops: int = 16, c: int = 336) -> torch.Tensor:
    """The reference's steps written plainly: PIL geometry, ToTensor-style float conversion,
    normalise, bicubic global view, reshape into crops, concatenate, pad, stack."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    out = []
    for im in images:
        im = im.convert("RGB")
        width, height = im.size
        portrait = width < height
        if portrait:
            im = im.transpose(Image.Transpose.TRANSPOSE)
            width, height = height, width
        ratio = width / height
        scale = 1
        while scale * math.ceil(scale / ratio) <= num_crops:
            scale += 1
        scale -= 1
        new_w, new_h = scale * c, int(scale * c / ratio)
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
        padded_h = math.ceil(new_h / c) * c
        canvas = Image.new("RGB", (new_w, padded_h), (255, 255, 255))
        canvas.paste(im, (0, (padded_h - new_h) // 2))
        if portrait:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        x = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous().float().div(255)
        x = x.sub(mean).div(std)
        glob = F.interpolate(x[None], size=(c, c), mode="bicubic", align_corners=False)
        h, w = x.shape[1] // c, x.shape[2] // c
        crops = x.reshape(1, 3, h, c, w, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, c, c)
        views = torch.cat([glob, crops])
        pad = torch.zeros(num_crops + 1 - views.shape[0], 3, c, c)
        out.append(torch.cat([views, pad]))
    return torch.stack(out)


def best_of(fn, repeats: int) -> tuple[float, float]:
    """Fastest wall time and fastest CPU time (this process, user + system) of ``repeats``
    runs, in seconds. On a shared machine the CPU time is the steadier figure."""
    fn()  # warm-up: allocator, lazy imports
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def rate(n: int, times: tuple[float, float], unit: str) -> str:
    wall, cpu = times
    return f"{n / wall:7.1f} {unit}/s wall, {n / cpu:7.1f} {unit}/s per CPU second"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = [product_photo(i) for i in range(args.images)]
    image_proc = Phi3VImageProcessor(num_crops=16)
    ours = image_proc(images[:2])["pixel_values"]
    base = reference_style(images[:2])
    print(f"torch threads {args.threads}; {args.images} photos 800x1000, num_crops 16, crop 336; "
          f"max |ours - reference-style| = {(ours - base).abs().max():.2e}")

    t_ours = best_of(lambda: image_proc(images), args.repeats)
    t_base = best_of(lambda: reference_style(images), args.repeats)
    print(f"image processor   : {rate(args.images, t_ours, 'images')}")
    print(f"reference-style   : {rate(args.images, t_base, 'images')}")
    print(f"speed-up          : {t_base[0] / t_ours[0]:7.2f}x wall, "
          f"{t_base[1] / t_ours[1]:.2f}x CPU")

    if (HUB / "tokenizer.json").is_file():
        proc, which = Phi3VProcessor.from_pretrained(HUB, num_crops=16), "real Phi-3 tokenizer"
    else:
        from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

        proc = Phi3VProcessor(image_proc, train_tiny_tokenizer(["coat"], 300))
        which = "tiny tokenizer (conformance kit absent)"
    batch = images[:8]
    t_batch = best_of(lambda: proc(text=[PROMPT] * len(batch), images=[[im] for im in batch],
                                   padding_side="left"), args.repeats)
    t_single = best_of(lambda: [proc(text=PROMPT, images=[im]) for im in batch], args.repeats)
    print(f"processor, {which}:")
    print(f"  one call, batch of {len(batch)} : {rate(len(batch), t_batch, 'prompts')}")
    print(f"  {len(batch)} single calls      : {rate(len(batch), t_single, 'prompts')}")
    print(f"  batch vs single      : {t_single[0] / t_batch[0]:7.2f}x wall, "
          f"{t_single[1] / t_batch[1]:.2f}x CPU")


if __name__ == "__main__":
    main()
