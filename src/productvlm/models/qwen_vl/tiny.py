"""Tiny random Qwen2.5-VL and Qwen3-VL models for tests and the demo: a config, a tokenizer
spec with Qwen2.5-VL-Instruct's ChatML template and ``<|vision_start|><|image_pad|>
<|vision_end|>``, and the processor (see :mod:`productvlm.models.tiny_families`).

>>> QWEN.eos
'<|im_end|>'
"""

from __future__ import annotations

from typing import Any

from productvlm.models.family import TinySizes
from productvlm.models.image_only import image_only_processor
from productvlm.models.tiny_tokenizer import TokenizerSpec

QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN = TokenizerSpec(
    special=("<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
             "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    bos=None, eos="<|im_end|>", pad="<|endoftext|>",
    additional=("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"),
    chat_template=QWEN_TEMPLATE,
)


def tiny_config(variant: str, tokenizer: Any, text: dict[str, Any], sizes: TinySizes) -> Any:
    """A small ``qwen2_5_vl`` or ``qwen3_vl`` config (``text``: the decoder's settings)."""
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    head = sizes.hidden_size // 4
    # multimodal rope: the head's frequencies split over time, height and width
    rope = {"rope_type": "default", "rope_theta": sizes.rope_theta,
            "mrope_section": [head // 8, head * 3 // 16, head * 3 // 16]}
    vision = {"depth": sizes.vision_layers, "hidden_size": sizes.vision_hidden,
              "intermediate_size": sizes.vision_hidden * 2, "num_heads": 4,
              "out_hidden_size": sizes.hidden_size, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    common = {"image_token_id": ids("<|image_pad|>"),
              "video_token_id": ids("<|video_pad|>"),
              "vision_start_token_id": ids("<|vision_start|>"),
              "vision_end_token_id": ids("<|vision_end|>"), "tie_word_embeddings": False,
              "bos_token_id": ids("<|endoftext|>"), "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id}
    if variant == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig(
            text_config={**text, "rope_scaling": {"type": "mrope", **rope}},
            vision_config={**vision, "patch_size": 14, "window_size": 56,
                           "fullatt_block_indexes": [sizes.vision_layers - 1]},
            **common)
    return transformers.Qwen3VLConfig(
        text_config={**text, "head_dim": head,
                     "rope_parameters": {**rope, "mrope_interleaved": True}},
        vision_config={**vision, "patch_size": 16, "num_position_embeddings": 64,
                       "deepstack_visual_indexes": [sizes.vision_layers // 2]},
        **common)


def tiny_processor(variant: str, tokenizer: Any, config: Any) -> Any:
    """The processor for ``config``'s patch size: 4 to 16 merged patches a photo."""
    import transformers

    patch = config.vision_config.patch_size
    unit = patch * 2  # a patch merged 2 x 2: one token
    images = transformers.Qwen2VLImageProcessorPil(min_pixels=unit * unit * 4,
                                                   max_pixels=unit * unit * 16,
                                                   patch_size=patch)
    cls = image_only_processor(transformers.Qwen2_5_VLProcessor if variant == "qwen2_5_vl"
                               else transformers.Qwen3VLProcessor)
    return cls(image_processor=images, tokenizer=tokenizer,
               chat_template=tokenizer.chat_template)


__all__ = ["QWEN", "QWEN_TEMPLATE", "tiny_config", "tiny_processor"]
