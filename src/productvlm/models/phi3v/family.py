"""Phi-3 / Phi-3.5-vision as a family: our own classes (this package), its ``<|image_1|>``
tag in the prompt text, crops whose processed views mirror as tensors, and a merged/ folder
in the Hub checkpoint's names that the repo's remote code loads too.

>>> PHI3V.name, PHI3V.processor_options
('phi3v', ('num_crops',))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from productvlm.errors import ProductVLMError
from productvlm.models.family import HUB_SHARD_SIZE, ImageOptions, ModelFamily, TapKind

#: Parameter-name prefix of its image side (CLIP tower, separators, projection): what the
#: vision warm-up trains.
VISION_PARAMS = "vision_embed_tokens."


def mirror_pixels(pixel_values: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """The processed views of the mirror image of a photo, from the processed photo's views.

    ``pixel_values`` (num_crops+1, 3, c, c): the global view, then the crops row-major. The
    global view mirrors in place; the crops swap columns and each mirrors, so the result is
    what the processor makes of the mirrored photo (the resizes are symmetric).

    >>> views = mirror_pixels(out["pixel_values"][0], out["image_sizes"][0])  # doctest: +SKIP
    """
    c = pixel_values.shape[-1]
    rows, cols = int(image_size[0]) // c, int(image_size[1]) // c
    n = rows * cols
    mirrored = pixel_values.clone()
    mirrored[0] = pixel_values[0].flip(-1)
    crops = pixel_values[1:1 + n].view(rows, cols, *pixel_values.shape[1:])
    mirrored[1:1 + n] = crops.flip(1).flip(-1).reshape(n, *pixel_values.shape[1:])
    return mirrored


@dataclass(frozen=True)
class Phi3VFamily(ModelFamily):
    """Phi-3-vision: what differs from transformers' own families."""

    def load(self, source: str, **kwargs: Any) -> nn.Module:
        from .modeling import Phi3VForCausalLM

        return Phi3VForCausalLM.from_pretrained(source, **kwargs)

    def vision_lora_parts(self, config: Any) -> tuple[str, ...]:
        # only the CLIP layers that feed the features (up to feature_layer) get gradients
        depth, layer = config.vision_config.num_hidden_layers, config.feature_layer
        used = layer if layer >= 0 else depth + 1 + layer
        layers = "|".join(str(i) for i in range(used))
        return (rf"model\.vision_embed_tokens\.img_processor\.vision_model\.encoder\.layers\."
                rf"({layers})\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))",
                r"model\.vision_embed_tokens\.img_projection\.(0|2)")

    def processor_name(self, model_type: str) -> str:
        from .processing import Phi3VProcessor

        return Phi3VProcessor.__name__

    def load_processor(self, source: str, name: str, options: ImageOptions,
                       owners: Any) -> Any:
        # the others' settings are left alone: every run's config has them
        from .processing import Phi3VProcessor

        return Phi3VProcessor.from_pretrained(source, num_crops=options.num_crops)

    def vllm_processor_kwargs(self, num_crops: int | None) -> dict[str, Any]:
        return {"num_crops": num_crops} if num_crops else {}

    def image_side(self, model: nn.Module) -> nn.Module:
        for name, module in model.named_modules():
            if f"{name}.".endswith(VISION_PARAMS):
                return module
        raise ProductVLMError("vision warm-up: the model has no image side (vision_embed_tokens)")

    def warmup_photo(self, image_processor: Any, image: Any) -> dict[str, torch.Tensor]:
        out = image_processor([image])
        return {"pixel_values": out["pixel_values"][0], "image_sizes": out["image_sizes"][0]}

    def mirror_photo(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**tensors, "pixel_values": mirror_pixels(tensors["pixel_values"],
                                                         tensors["image_sizes"])}

    def join_photos(self, items: Any) -> dict[str, torch.Tensor]:
        return {k: torch.stack([torch.as_tensor(x[k]) for x in items]) for k in items[0]}

    def image_features(self, model: nn.Module, side: nn.Module,
                       batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = next(side.parameters()).dtype
        tokens = side(batch["pixel_values"].to(dtype), batch["image_sizes"])
        return torch.stack([t.mean(0) for t in tokens]).float()

    def feature_tap(self, model: nn.Module) -> tuple[nn.Module, TapKind]:
        return model.get_submodule("model.vision_embed_tokens"), "images"

    def run_image_side(self, model: nn.Module, batch: dict[str, Any]) -> None:
        model.get_submodule("model.vision_embed_tokens")(batch["pixel_values"],
                                                         batch["image_sizes"])

    def save_merged(self, merged: nn.Module, processor: Any, out: str | Path,
                    base: str | Path) -> None:
        # the Hub checkpoint's names and shards, with the decoder embedding's second copy
        # that the reference code saves, then the base model's remote code and auto_map
        from productvlm.models.remote_code import carry_remote_code

        from .hub_layout import WTE_COPY

        state = merged.state_dict()
        # a copy: safetensors refuses aliased tensors (the reference shares the module)
        state[WTE_COPY] = state["model.embed_tokens.weight"].clone()
        merged.save_pretrained(out, state_dict=state, max_shard_size=HUB_SHARD_SIZE)
        del state
        processor.save_pretrained(out)
        carry_remote_code(base, out)


PHI3V = Phi3VFamily(
    name="phi3v", title="Phi-3 / Phi-3.5-vision", model_types=("phi3_v",),
    structured_prompt=False,
    decoder=r"model\.layers\.\d+\.(self_attn|mlp)",
    decoder_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    vision_modules=("model.vision_embed_tokens",),
    tower=("model.vision_embed_tokens.img_processor",),
    vision_lora="",  # built from the config: only the CLIP layers that feed features
    text_model="model", class_prefixes=("Phi3V",),
    processor_options=("num_crops",), options_title="Phi-3-vision", numbered_image_tags=True,
    liger=(("phi3_v", "phi3"),),  # the decoder is transformers' Phi-3
    fused_loss=False,  # its forward places the image features and computes the loss
    mirrors_views=True,
    vllm_lora=False,  # vLLM has no LoRA for its model class
)

__all__ = ["PHI3V", "VISION_PARAMS", "Phi3VFamily", "mirror_pixels"]
