"""How a training step spends the device's memory: the activation estimate behind
``gradient_checkpointing: auto``, whether batches are packed (``packing: auto``), and how
many photos a forward pass takes (``micro_batch: auto``, the step's photos re-split to fill
the device).

Gradient checkpointing recomputes every decoder layer's forward pass in the backward pass:
about a third more compute, to keep one layer's activations instead of all of them. On a
device with room for them all (an H200 holds a Phi-3-vision LoRA step of 8 photos at
num_crops 16 several times over) that third is pure loss, so ``auto`` turns it on only when
the estimated activations of the largest step do not fit.

The estimate (what autograd keeps per token and decoder layer, after Korthikanti et al.,
"Reducing Activation Recomputation in Large Transformer Models", 2022, for a gated MLP,
grouped KV heads and a fused attention kernel that keeps no scores): the two norms' inputs
and outputs (4h), q, k and v (h + 2kv), the attention output (h), the MLP's gate and up
projections (2i), its activation and product (2i); LoRA with dropout adds the dropped input
of each wrapped projection (3h + i). Besides the layers: the logits and their float32 loss
(tokens x vocab x 10 bytes). The image tower is left out (frozen, or small beside the
decoder). Checkpointed, a layer keeps only its input (h) and one layer at a time is whole.

>>> est = ActivationEstimate(tokens=16_000, layers=32, hidden=3072, intermediate=8192,
...                          kv=3072, vocab=32064, dtype_bytes=2, lora_dropout=True)
>>> round(est.full() / 1e9, 1), round(est.checkpointed() / 1e9, 1)
(81.7, 10.7)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from productvlm.errors import ProductVLMError
from productvlm.models.families import kv_width, unwrap
from productvlm.models.loading import mixed_precision
from productvlm.training.packing import packing_pays

#: the share of the device's memory a step may plan to use (allocator slack, fragmentation)
HEADROOM = 0.85
#: collated batches sampled from the training split to size a step
SAMPLED_BATCHES = 8


@dataclass(frozen=True)
class ActivationEstimate:
    """The activation memory of one training step (see the module's docstring)."""

    tokens: int  # tokens computed in the step (padded or packed)
    layers: int
    hidden: int
    intermediate: int
    kv: int  # width of K (and of V): kv heads x head size
    vocab: int
    dtype_bytes: int
    lora_dropout: bool

    def per_token_layer(self) -> int:
        h, i = self.hidden, self.intermediate
        elements = 6 * h + 2 * self.kv + 4 * i + ((3 * h + i) if self.lora_dropout else 0)
        return elements * self.dtype_bytes

    def logits(self) -> int:
        return self.tokens * self.vocab * 10

    def full(self) -> int:
        """Bytes kept for the backward pass without checkpointing."""
        return self.tokens * self.layers * self.per_token_layer() + self.logits()

    def checkpointed(self) -> int:
        """Bytes with each layer recomputed: its inputs, one whole layer, the logits."""
        inputs = self.tokens * self.layers * self.hidden * self.dtype_bytes
        return inputs + self.tokens * self.per_token_layer() + self.logits()


@dataclass(frozen=True)
class StepPlan:
    """What a training step does, decided once at start and printed: whether it is
    checkpointed and packed, and how an optimizer step's photos are split into forward passes
    (``micro_batch`` photos each, ``grad_accum`` of them)."""

    checkpointing: bool
    packing: bool
    micro_batch: int
    grad_accum: int
    message: str


def sample_steps(collator: Any, rows: Any, batch_size: int) -> tuple[int, int]:
    """(most real tokens, most padded tokens) of a step over :data:`SAMPLED_BATCHES` batches
    of ``rows`` spread over the split (the collator writes them as training does)."""
    n = len(rows)
    starts = sorted({int(k * max(n - batch_size, 0) / max(SAMPLED_BATCHES - 1, 1))
                     for k in range(SAMPLED_BATCHES)})
    real = padded = 0
    for start in starts:
        batch = collator([rows[j] for j in range(start, min(start + batch_size, n))])
        mask = batch["attention_mask"]
        real, padded = max(real, int(mask.sum())), max(padded, int(mask.numel()))
    return real, padded


def device_memory(device: torch.device) -> tuple[int, str]:
    """(bytes the step may use on ``device``, what they are), before the model's own."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"{torch.cuda.get_device_name(device)}'s {total / 1e9:.0f} GB"
    import psutil

    free = psutil.virtual_memory().available
    return free, f"{free / 1e9:.0f} GB of free RAM"


def split_step(step: int, fits: Any) -> int | None:
    """The largest divisor of ``step`` (the photos of an optimizer step) for which
    ``fits(divisor)``, or None.

    >>> split_step(16, lambda m: m <= 6)
    4
    """
    return next((m for m in range(step, 0, -1) if step % m == 0 and fits(m)), None)


def _estimate(model: Any, cfg: Any, tokens: int) -> ActivationEstimate:
    text = unwrap(model).config.get_text_config()
    return ActivationEstimate(
        tokens=tokens, layers=text.num_hidden_layers, hidden=text.hidden_size,
        intermediate=text.intermediate_size, kv=kv_width(text),
        vocab=text.vocab_size, dtype_bytes=2 if any(mixed_precision(cfg.precision)) or (
            unwrap(model).dtype in (torch.bfloat16, torch.float16)) else 4,
        lora_dropout=cfg.mode != "full" and cfg.lora_dropout > 0)


def plan_step(model: Any, collator: Any, rows: Any, cfg: Any, device: torch.device) -> StepPlan:
    """Resolve ``cfg.gradient_checkpointing``, ``cfg.packing`` and ``cfg.micro_batch`` (each
    may be ``"auto"``) for ``model`` training on ``rows``; the plan's message says what was
    decided from what.

    ``micro_batch: auto`` on a GPU takes the largest divisor of the optimizer step's photos
    (batch_size x grad_accum, which stays: the same optimizer steps, the loss weighted by
    tokens across forward passes) whose activations fit without checkpointing; where none
    does and checkpointing is ``auto``, it turns checkpointing on and takes the largest that
    fits with it. On the CPU a larger forward pass is no faster, so it keeps batch_size.

    >>> plan = plan_step(model, collator, ds["train"], cfg, torch.device("cuda"))  # doctest: +SKIP
    >>> print(plan.message)  # doctest: +SKIP
    """
    attn = str(cfg.attn_implementation)
    if attn == "flex_attention" and device.type != "cuda":
        raise ProductVLMError("attn_implementation flex_attention trains only on a GPU (torch "
                              "has no CPU backward for it); use sdpa on the CPU")
    packing = packing_pays(attn) if cfg.packing == "auto" else bool(cfg.packing)
    step = cfg.batch_size * cfg.grad_accum
    fill = cfg.micro_batch == "auto" and device.type == "cuda"
    micro = cfg.batch_size if cfg.micro_batch == "auto" else int(cfg.micro_batch)
    if cfg.gradient_checkpointing != "auto" and cfg.packing != "auto" and not fill:
        checkpointing = bool(cfg.gradient_checkpointing)
        return StepPlan(checkpointing, packing, micro, step // micro,
                        f"step: {_split(micro, step)}, packing {_on(packing)} ({attn}), "
                        f"gradient checkpointing {_on(checkpointing)}, as the config sets")
    sampled = step if fill else micro
    real, padded = sample_steps(collator, rows, sampled)
    per_photo = (real if packing else padded) / sampled  # the longest rows' share: an upper bound
    est = lambda m: _estimate(model, cfg, max(1, round(per_photo * m)))  # noqa: E731
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    optimizer = 16 * sum(p.numel() for p in params if p.requires_grad)  # AdamW: fp32 m, v, grad
    memory, what = device_memory(device)
    room = HEADROOM * memory - (weights + optimizer if device.type == "cuda" else optimizer)
    if cfg.gradient_checkpointing == "auto":
        if fill:
            whole = split_step(step, lambda m: est(m).full() <= room)
            checkpointing = whole is None
            micro = whole or split_step(step, lambda m: est(m).checkpointed() <= room) or 1
        else:
            checkpointing = est(micro).full() > room
    else:
        checkpointing = bool(cfg.gradient_checkpointing)
        if fill:
            kept = (lambda m: est(m).checkpointed()) if checkpointing else (lambda m: est(m).full())
            micro = split_step(step, lambda m: kept(m) <= room) or 1
    e = est(micro)
    fits = max(int(room // (e.full() / micro)), 0)
    how = "filled to the device" if fill else (
        "as the config sets" if cfg.micro_batch != "auto" else "batch_size: the CPU")
    message = (
        f"step: {_split(micro, step)} ({how}), {e.tokens:,} tokens a pass "
        f"({'packed' if packing else 'padded'}; sampled {real:,} real / {padded:,} padded "
        f"tokens in {sampled} photos) -> packing {_on(packing)} ({attn}); activations "
        f"~{e.full() / 1e9:.1f} GB ({e.checkpointed() / 1e9:.1f} GB checkpointed; {e.layers} "
        f"layers x {e.hidden} wide, {e.dtype_bytes}-byte) against ~{room / 1e9:.1f} GB left "
        f"of {what} after weights and optimizer ({(weights + optimizer) / 1e9:.1f} GB) -> "
        f"gradient checkpointing {_on(checkpointing)}; about {fits} photos a pass fit "
        "without it")
    return StepPlan(checkpointing, packing, micro, step // micro, message)


def _split(micro: int, step: int) -> str:
    return f"{step} photos an optimizer step = {step // micro} pass(es) of {micro}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def print_plan(plan: StepPlan) -> None:
    """The plan's message on stderr (where the Trainer's own notes go)."""
    print(plan.message, file=sys.stderr)


__all__ = ["ActivationEstimate", "HEADROOM", "StepPlan", "device_memory", "plan_step",
           "print_plan", "sample_steps", "split_step"]
