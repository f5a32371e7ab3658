"""How many photos an answering batch takes: ``batch_size: auto`` fills the device.

Answering a batch keeps, per photo, the decoder's KV cache for its prompt and answer
(layers x 2 x KV width x tokens), the logits of each generated step where prices are measured
(``output_logits``), and, while the prompt is prefilled, one decoder layer's working set at a
time (its norms' inputs and outputs, q/k/v and the attention output, the gated MLP's three
intermediate tensors; a fused attention kernel keeps no scores). The prompt is the longest a
photo can make: the most over large photos of a few aspect ratios, which fill Phi-3's and
Phi-4's crop grids, Qwen's pixel budget and SmolVLM's tiles. What the model's weights leave
of the GPU, at :data:`HEADROOM`, divided by that, is the batch. On the CPU a larger batch is
hardly faster (the cores are the limit), so ``auto`` there is :data:`~.record.BATCH_SIZE`.

>>> size, why = answer_batch_size(model, processor, max_new_tokens=64,
...                               question=QUESTION)  # doctest: +SKIP
>>> print(why)  # doctest: +SKIP
batch size auto: 82 photos a batch (NVIDIA H200: 131.2 of 141 GB free after the weights; ...)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from productvlm.inference.record import BATCH_SIZE
from productvlm.models.families import kv_width

#: the share of the free device memory a batch may plan to use (allocator slack, the image
#: tower's own activations, fragmentation)
HEADROOM = 0.8
#: the largest batch ``auto`` picks (beyond it, a batch's answers wait on its slowest row)
MAX_AUTO = 256
#: the long side of the photos whose prompts are measured (larger than any family's cap),
#: and their aspect ratios (width, height)
PROBE_SIDE = 2048
PROBE_ASPECTS = [(1, 1), (2, 1), (1, 2), (3, 1), (1, 3), (4, 1), (1, 4), (3, 2), (2, 3)]

#: a config's ``batch_size``: photos a batch, or ``auto`` (:func:`answer_batch_size`)
BatchSize = Annotated[int, Field(ge=1)] | Literal["auto"]
BATCH_HELP = ("photos a generation batch; auto: as many as fit the GPU (printed), "
              f"{BATCH_SIZE} on the CPU")


def prompt_tokens(processor: Any, question: str) -> int:
    """Tokens of the longest prompt a photo makes: the most over photos of
    :data:`PROBE_SIDE` px on their long side at the aspect ratios of :data:`PROBE_ASPECTS`
    (a crop grid's count follows the aspect: Phi-4's dynamic HD gives a 1:3 photo more crops
    than a square)."""
    from PIL import Image

    from productvlm.prompts import render_prompt

    text = render_prompt(processor.tokenizer, question)
    longest = 0
    for w, h in PROBE_ASPECTS:
        size = (PROBE_SIDE * w // max(w, h), PROBE_SIDE * h // max(w, h))
        ids = processor(text=[text], images=[Image.new("RGB", size, "gray")],
                        return_tensors="pt")["input_ids"]
        longest = max(longest, int(ids.shape[1]))
    return longest


def bytes_per_photo(text_config: Any, tokens: int, max_new_tokens: int, dtype_bytes: int,
                    logits: bool) -> int:
    """What one photo of a batch holds on the device while it is answered (module docstring).

    >>> from types import SimpleNamespace as C
    >>> phi3 = C(num_hidden_layers=32, hidden_size=3072, intermediate_size=8192,
    ...          num_attention_heads=32, num_key_value_heads=32, vocab_size=32064)
    >>> round(bytes_per_photo(phi3, 2519, 64, 2, logits=True) / 1e9, 2)
    1.27
    """
    h, i, kv = text_config.hidden_size, text_config.intermediate_size, kv_width(text_config)
    cache = text_config.num_hidden_layers * 2 * kv * (tokens + max_new_tokens) * dtype_bytes
    layer = tokens * (6 * h + 2 * kv + 3 * i) * dtype_bytes
    scores = max_new_tokens * text_config.vocab_size * 4 if logits else 0
    return cache + layer + scores


def answer_batch_size(model: Any, processor: Any, *, max_new_tokens: int, question: str,
                      logits: bool = True) -> tuple[int, str]:
    """(photos a batch, why) for ``model`` answering on its device (module docstring)."""
    import torch

    device = model.device
    if device.type != "cuda":
        return BATCH_SIZE, f"batch size auto: {BATCH_SIZE} photos a batch (the CPU)"
    tokens = prompt_tokens(processor, question)
    text = model.config.get_text_config()
    dtype_bytes = next(model.parameters()).element_size()
    each = bytes_per_photo(text, tokens, max_new_tokens, dtype_bytes, logits)
    free, total = torch.cuda.mem_get_info(device)
    size = max(1, min(MAX_AUTO, int(HEADROOM * free // each)))
    return size, (f"batch size auto: {size} photos a batch ({torch.cuda.get_device_name(device)}"
                  f": {free / 1e9:.1f} of {total / 1e9:.0f} GB free after the weights; a photo "
                  f"~{each / 1e9:.2f} GB: KV cache of up to {tokens:,} prompt + "
                  f"{max_new_tokens} answer tokens, a layer's prefill, the answer's logits; "
                  f"{HEADROOM:.0%} of it used)")


def plan_rows(batch_size: BatchSize) -> int:
    """Rows a planned batch holds (audit parts, Ray payloads), before any model is loaded:
    the set size, or for ``auto`` :data:`MAX_AUTO` rows that the predictor answers in
    batches of the size it picks.

    >>> plan_rows(16), plan_rows("auto")
    (16, 256)
    """
    return MAX_AUTO if batch_size == "auto" else int(batch_size)


__all__ = ["BATCH_HELP", "HEADROOM", "MAX_AUTO", "BatchSize", "answer_batch_size",
           "bytes_per_photo", "plan_rows", "prompt_tokens"]
