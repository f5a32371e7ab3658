"""Qwen2.5-VL / Qwen3-VL as a family: transformers' classes, min / max pixels, multimodal
rope (a row's positions after the prompt are offset by its rope delta), and a video
processor its folders must carry though photos never use it.

>>> QWEN_VL.model_types
('qwen2_5_vl', 'qwen2_vl', 'qwen3_vl')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from productvlm.models.family import ImageOptions, ModelFamily, TinySizes

#: The video processor its processor loads beside its image processor, by config.json's
#: model_type. Photos never use it, but transformers 5.19 and vLLM refuse a Qwen folder
#: without one, and a processor saved where torchvision is missing (the CPU install,
#: :func:`productvlm.models.image_only.image_only_processor`) has none.
VIDEO_PROCESSORS = {"qwen2_5_vl": "Qwen2VLVideoProcessor", "qwen2_vl": "Qwen2VLVideoProcessor",
                    "qwen3_vl": "Qwen3VLVideoProcessor"}
#: the image processor's settings its video processor shares (the rest are its defaults)
VIDEO_SHARED = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean",
                "image_std", "merge_size", "patch_size", "resample", "rescale_factor", "size",
                "temporal_patch_size")


@dataclass(frozen=True)
class QwenVLFamily(ModelFamily):
    """Qwen2.5-VL / Qwen3-VL: what differs from the defaults."""

    def apply_image_options(self, images: Any, options: ImageOptions, owners: Any) -> None:
        super().apply_image_options(images, options, owners)
        if options.min_pixels is None and options.max_pixels is None:
            return
        size = dict(getattr(images, "size", None) or {})
        for key, value in (("shortest_edge", options.min_pixels),
                           ("longest_edge", options.max_pixels)):
            if value is not None:
                size[key] = value
        images.size = size  # its min and max pixels (its older min_pixels / max_pixels)

    def image_features(self, model: nn.Module, side: nn.Module,
                       batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
        feats = model.model.get_image_features(**inputs).pooler_output
        return torch.stack([t.mean(0) for t in feats]).float()  # one tensor per photo

    def rope_offsets(self, model: Any) -> torch.Tensor | None:
        # the image's tokens take fewer positions than places: its rope delta per row
        deltas = getattr(getattr(model, "model", None), "rope_deltas", None)
        return deltas if isinstance(deltas, torch.Tensor) else None

    def complete_folder(self, folder: str | Path) -> list[str]:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        kind = VIDEO_PROCESSORS.get(config.get("model_type", ""))
        path = folder / "processor_config.json"
        if kind is None or not path.is_file() or (
                folder / "video_preprocessor_config.json").is_file():
            return []
        saved = json.loads(path.read_text())
        if "video_processor" in saved:
            return []
        image = saved.get("image_processor") or {}
        saved["video_processor"] = {**{k: image[k] for k in VIDEO_SHARED if k in image},
                                    "video_processor_type": kind}
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        return ["video_processor"]

    def tiny_spec(self, variant: str) -> Any:
        from .tiny import QWEN

        return QWEN

    def tiny_config(self, variant: str, tokenizer: Any, text: dict[str, Any],
                    sizes: TinySizes) -> Any:
        from .tiny import tiny_config

        return tiny_config(variant, tokenizer, text, sizes)

    def tiny_processor(self, variant: str, tokenizer: Any, config: Any, crops: int) -> Any:
        from .tiny import tiny_processor

        return tiny_processor(variant, tokenizer, config)


QWEN_VL = QwenVLFamily(
    name="qwen2_5_vl", title="Qwen2.5-VL / Qwen3-VL",
    model_types=("qwen2_5_vl", "qwen2_vl", "qwen3_vl"),
    structured_prompt=True,
    decoder=r"model\.language_model\.layers\.\d+\.(self_attn|mlp)",
    decoder_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj"),
    vision_modules=("model.visual",),
    tower=("model.visual.patch_embed", "model.visual.pos_embed", "model.visual.blocks"),
    vision_lora=(r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|"
                 r"mlp\.(gate_proj|up_proj|down_proj|linear_fc1|linear_fc2))"
                 r"|model\.visual\.merger\.(mlp\.(0|2)|linear_fc1|linear_fc2)"),
    text_model="model.language_model", class_prefixes=("Qwen",),
    processor_options=("min_pixels", "max_pixels"), options_title="Qwen-VL",
    rope_index="model",
    liger=(("qwen2_5_vl", "qwen2_5_vl"), ("qwen2_vl", "qwen2_vl"), ("qwen3_vl", "qwen3_vl")),
    tiny_variants=("qwen2_5_vl", "qwen3_vl"),
)

__all__ = ["QWEN_VL", "VIDEO_PROCESSORS", "QwenVLFamily"]
