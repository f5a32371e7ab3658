"""merged/: a fine-tuned model written as a drop-in for its base model, in the family's
own Hub format (the one owner of that format).

>>> save_merged(peft_model, processor, "runs/lora/merged", base=cfg.model)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from productvlm.models.families import family_of
from productvlm.models.loading import merge_adapter

#: The video processor that a family's processor loads beside its image processor, by
#: config.json's model_type. Photos never use it, but transformers 5.19 and vLLM refuse a
#: Qwen folder without one, and a processor saved where torchvision is missing (the CPU
#: install, :func:`productvlm.models.families.image_only_processor`) has none.
VIDEO_PROCESSORS = {"qwen2_5_vl": "Qwen2VLVideoProcessor", "qwen2_vl": "Qwen2VLVideoProcessor",
                    "qwen3_vl": "Qwen3VLVideoProcessor"}
#: the image processor's settings its video processor shares (the rest are its defaults)
VIDEO_SHARED = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean",
                "image_std", "merge_size", "patch_size", "resample", "rescale_factor", "size",
                "temporal_patch_size")
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
        complete_processor(out)
        return merged
    state = merged.state_dict()
    # a copy: safetensors refuses aliased tensors (the reference shares the module instead)
    state[WTE_COPY] = state["model.embed_tokens.weight"].clone()
    merged.save_pretrained(out, state_dict=state, max_shard_size=HUB_SHARD_SIZE)
    del state
    processor.save_pretrained(out)
    carry_remote_code(base, out)
    return merged


def complete_processor(folder: str | os.PathLike) -> list[str]:
    """Add to a saved model folder the processor parts its family's processor class loads
    besides the ones photos use (a Qwen folder's video processor, written from its image
    processor's settings), so transformers 5.19 and vLLM load it; returns what was added.

    >>> complete_processor("runs/qwen/train/merged")  # doctest: +SKIP
    ['video_processor']
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    kind = VIDEO_PROCESSORS.get(config.get("model_type", ""))
    path = folder / "processor_config.json"
    if kind is None or not path.is_file() or (folder / "video_preprocessor_config.json").is_file():
        return []
    saved = json.loads(path.read_text())
    if "video_processor" in saved:
        return []
    image = saved.get("image_processor") or {}
    saved["video_processor"] = {**{k: image[k] for k in VIDEO_SHARED if k in image},
                                "video_processor_type": kind}
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return ["video_processor"]


__all__ = ["HUB_SHARD_SIZE", "VIDEO_PROCESSORS", "complete_processor", "save_merged"]
