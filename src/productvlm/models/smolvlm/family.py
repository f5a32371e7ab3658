"""SmolVLM / SmolVLM2 (Idefics3) as a family: transformers' classes, image splitting and
the longest edge as its image-size settings, and image features per tile.

>>> SMOLVLM.processor_options
('image_splitting', 'longest_edge')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from productvlm.models.family import ImageOptions, ModelFamily, TinySizes


@dataclass(frozen=True)
class SmolVLMFamily(ModelFamily):
    """SmolVLM: what differs from the defaults."""

    def apply_image_options(self, images: Any, options: ImageOptions, owners: Any) -> None:
        super().apply_image_options(images, options, owners)
        if options.image_splitting is not None:
            images.do_image_splitting = options.image_splitting  # tiles besides the whole
        if options.longest_edge is not None:
            size = dict(getattr(images, "size", None) or {})
            images.size = {**size, "longest_edge": options.longest_edge}

    def image_features(self, model: nn.Module, side: nn.Module,
                       batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("pixel_values", "pixel_attention_mask") if k in batch}
        feats = model.model.get_image_features(**inputs).pooler_output
        if isinstance(feats, tuple | list):  # transformers 5.2x: one tensor per photo
            return torch.stack([t.mean(0) for t in feats]).float()
        # (sub-images, tokens, hidden) of the real (not padding) sub-images, in order
        real = (batch["pixel_values"] != 0).flatten(2).any(-1).sum(1).tolist()
        return torch.stack([t.flatten(0, 1).mean(0) for t in torch.split(feats, real)]).float()

    def tiny_spec(self, variant: str) -> Any:
        from .tiny import SMOLVLM_SPEC

        return SMOLVLM_SPEC

    def tiny_config(self, variant: str, tokenizer: Any, text: dict[str, Any],
                    sizes: TinySizes) -> Any:
        from .tiny import tiny_config

        return tiny_config(variant, tokenizer, text, sizes)

    def tiny_processor(self, variant: str, tokenizer: Any, config: Any, crops: int) -> Any:
        from .tiny import tiny_processor

        return tiny_processor(variant, tokenizer, config)


SMOLVLM = SmolVLMFamily(
    name="smolvlm", title="SmolVLM / SmolVLM2 (Idefics3)",
    model_types=("idefics3", "smolvlm"),
    structured_prompt=True,
    decoder=r"model\.text_model\.layers\.\d+\.(self_attn|mlp)",
    decoder_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj"),
    vision_modules=("model.vision_model", "model.connector"),
    tower=("model.vision_model",),
    vision_lora=(r"model\.vision_model\.encoder\.layers\.\d+\."
                 r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
                 r"|model\.connector\.modality_projection\.proj"),
    text_model="model.text_model", class_prefixes=("Idefics3", "SmolVLM"),
    processor_options=("image_splitting", "longest_edge"), options_title="SmolVLM",
    liger=(("smolvlm", "smolvlm"),),
    tiny_variants=("smolvlm", "smolvlm2"),
)

__all__ = ["SMOLVLM", "SmolVLMFamily"]
