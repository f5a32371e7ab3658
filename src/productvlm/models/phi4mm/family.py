"""Phi-4-multimodal as a family: ``AutoModelForCausalLM``, its own image tensor and masks,
the image embedding that writes the decoder's input in place, the vision LoRA its
checkpoint ships (merged in at load), a speech encoder a photo task never uses, and our
image processor (:mod:`.images`) whether torchvision is there or not.

>>> PHI4MM.auto_class, PHI4MM.pixels
('AutoModelForCausalLM', 'image_pixel_values')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from productvlm.models.family import ImageOptions, ModelFamily, TinySizes


@dataclass(frozen=True)
class Phi4MMFamily(ModelFamily):
    """Phi-4-multimodal: what differs from the defaults."""

    def processor_class(self, name: str, source: str) -> type:
        from .images import processor_class

        return processor_class()  # ours reads photos, torchvision or not

    def apply_image_options(self, images: Any, options: ImageOptions, owners: Any) -> None:
        super().apply_image_options(images, options, owners)
        if options.dynamic_hd is not None:
            images.dynamic_hd = options.dynamic_hd  # the most crops a photo

    def image_features(self, model: nn.Module, side: nn.Module,
                       batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # the image embedding writes each photo's tokens in place of its image tokens
        dtype = next(side.parameters()).dtype
        counts = batch["num_img_tokens"].tolist()
        embed = model.get_submodule(self.vision_modules[0])
        ids = torch.full((1, sum(counts)), self.image_token_id(model.config))
        room = torch.zeros(1, sum(counts), model.config.hidden_size, dtype=dtype,
                           device=next(side.parameters()).device)
        tokens = embed(ids.to(room.device), room, image_pixel_values=batch[self.pixels],
                       image_sizes=batch["image_sizes"],
                       image_attention_mask=batch["image_attention_mask"])[0]
        return torch.stack([t.mean(0) for t in tokens.split(counts)]).float()

    def tiny_spec(self, variant: str) -> Any:
        from .tiny import PHI4MM_SPEC

        return PHI4MM_SPEC

    def tiny_config(self, variant: str, tokenizer: Any, text: dict[str, Any],
                    sizes: TinySizes) -> Any:
        from .tiny import tiny_config

        return tiny_config(tokenizer, text, sizes)

    def tiny_processor(self, variant: str, tokenizer: Any, config: Any, crops: int) -> Any:
        from .tiny import tiny_processor

        return tiny_processor(tokenizer, config, crops)

    def init_tiny(self, model: nn.Module) -> None:
        from .tiny import siglip_init

        siglip_init(model.get_submodule(self.tower[0]))


PHI4MM = Phi4MMFamily(
    name="phi4mm", title="Phi-4-multimodal", model_types=("phi4_multimodal",),
    structured_prompt=True,
    decoder=r"model\.layers\.\d+\.(self_attn|mlp)",
    decoder_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    vision_modules=("model.embed_tokens_extend.image_embed",),
    tower=("model.embed_tokens_extend.image_embed.img_processor",),
    vision_lora=(r"model\.embed_tokens_extend\.image_embed\.img_processor\.encoder\."
                 r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
                 r"|model\.embed_tokens_extend\.image_embed\.img_projection_(up|down)"),
    text_model="model", class_prefixes=("Phi4Multimodal",),
    processor_options=("dynamic_hd",), options_title="Phi-4-multimodal",
    auto_class="AutoModelForCausalLM", pixels="image_pixel_values",
    image_token_attr="vision_config.image_token_id",
    embeds_module="model.embed_tokens_extend",
    frozen=("model.embed_tokens_extend.audio_embed",),  # the speech encoder
    merged_adapters=("vision-lora",),  # the model card's image answers use it
    # transformers 5.24 sets is_causal = True on its SigLIP tower's attention: with SDPA
    # and no padded crop in the batch a patch then sees only the patches before it,
    # with one it sees them all (eager attention always does); README, Model families
    bidirectional=("Phi4MultimodalVisionAttention",),
    remote_formats=((
        "phi4mm",
        "Phi-4-multimodal's remote-code format (the Hub repo's main branch); load its "
        "transformers format (model_type phi4_multimodal; transformers' own tests use "
        "revision refs/pr/70): hf download microsoft/Phi-4-multimodal-"
        "instruct --revision refs/pr/70 --local-dir DIR, then --model DIR"),),
    # its masks of empty crops: an all-zero mask would leave their patches nothing to see
    padded_with_ones=("image_attention_mask",),
    tiny_variants=("phi4mm",),
)

__all__ = ["PHI4MM", "Phi4MMFamily"]
