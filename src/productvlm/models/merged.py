"""merged/: a fine-tuned model written as a drop-in for its base model, in the family's
own Hub format (the one owner of that format).

>>> save_merged(peft_model, processor, "runs/lora/merged", base=cfg.model)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import torch

from productvlm.models.families import family_of
from productvlm.models.loading import merge_adapter

#: The Hub checkpoint's shard size: a 4.2B bf16 model is two shards and an index, as there.
HUB_SHARD_SIZE = "5GB"


def save_merged(model: Any, processor: Any, out: str | os.PathLike,
                base: str | os.PathLike) -> torch.nn.Module:
    """Write ``out`` as a drop-in for the base model; returns the merged model.

    A PEFT model is merged first (``merge_adapter``, in place). A transformers family
    (Qwen2.5-VL, SmolVLM, Phi-4-multimodal) is saved by its own ``save_pretrained`` with its
    processor: it reloads with its auto class (``Family.auto_class``) and ``AutoProcessor``.
    For Phi-3-vision the weights are saved under the Hub checkpoint's names and shards, with
    the decoder embedding's second copy (``model.vision_embed_tokens.wte.weight``) that the
    reference code saves, then the processor, then the base model's remote code and
    ``auto_map`` entries (see models/remote_code.py), so tools that load the repo's own code
    load ``out`` as well.

    >>> save_merged(peft_model, processor, "runs/lora/merged", base=cfg.model)  # doctest: +SKIP
    """
    from productvlm.models.phi3v.hub_layout import WTE_COPY
    from productvlm.models.remote_code import carry_remote_code

    merged = merge_adapter(model) if hasattr(model, "merge_and_unload") else model
    if not family_of(merged).native:
        merged.save_pretrained(out, max_shard_size=HUB_SHARD_SIZE)
        processor.save_pretrained(out)
        return merged
    state = merged.state_dict()
    # a copy: safetensors refuses aliased tensors (the reference shares the module instead)
    state[WTE_COPY] = state["model.embed_tokens.weight"].clone()
    merged.save_pretrained(out, state_dict=state, max_shard_size=HUB_SHARD_SIZE)
    del state
    processor.save_pretrained(out)
    carry_remote_code(base, out)
    return merged


__all__ = ["HUB_SHARD_SIZE", "save_merged"]
