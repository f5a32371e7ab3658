"""merged/: a fine-tuned model written as a drop-in for its base model, in the family's
own Hub format (the family writes it: :meth:`ModelFamily.save_merged`).

>>> save_merged(peft_model, processor, "runs/lora/merged", base=cfg.model)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from productvlm.errors import ProductVLMError
from productvlm.models.families import family_for, family_of
from productvlm.models.family import HUB_SHARD_SIZE
from productvlm.models.loading import merge_adapter


def save_merged(model: Any, processor: Any, out: str | os.PathLike,
                base: str | os.PathLike) -> torch.nn.Module:
    """Write ``out`` as a drop-in for the base model; returns the merged model.

    A PEFT model is merged first (``merge_adapter``, in place). A transformers family
    (Qwen2.5-VL, SmolVLM, Phi-4-multimodal) is saved by its own ``save_pretrained`` with its
    processor: it reloads with its auto class (``ModelFamily.auto_class``) and
    ``AutoProcessor``. For Phi-3-vision the weights are saved under the Hub checkpoint's names
    and shards, with the decoder embedding's second copy
    (``model.vision_embed_tokens.wte.weight``) that the reference code saves, then the
    processor, then the base model's remote code and ``auto_map`` entries (see
    models/remote_code.py), so tools that load the repo's own code load ``out`` as well.

    >>> save_merged(peft_model, processor, "runs/lora/merged", base=cfg.model)  # doctest: +SKIP
    """
    merged = merge_adapter(model) if hasattr(model, "merge_and_unload") else model
    family_of(merged).save_merged(merged, processor, out, base)
    return merged


def complete_processor(folder: str | os.PathLike) -> list[str]:
    """Add to a saved model folder the processor parts its family's processor class loads
    besides the ones photos use (a Qwen folder's video processor, written from its image
    processor's settings), so transformers 5.19 and vLLM load it; returns what was added.

    >>> complete_processor("runs/qwen/train/merged")  # doctest: +SKIP
    ['video_processor']
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    try:
        fam = family_for(str(config.get("model_type", "")))
    except ProductVLMError:
        return []  # not a family's folder: nothing is known to be missing
    return fam.complete_folder(folder)


__all__ = ["HUB_SHARD_SIZE", "complete_processor", "save_merged"]
