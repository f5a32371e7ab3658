"""A tiny random Phi-4-multimodal model for tests and the demo: a config (a small SigLIP
tower and a speech encoder never fed), a tokenizer spec with Phi-4-multimodal-instruct's
``<|user|><|image|>...<|end|><|assistant|>`` turns, and the processor with our image
processor (:mod:`.images`; see :mod:`productvlm.models.tiny_families`).

>>> PHI4MM_SPEC.eos
'<|endoftext|>'
"""

from __future__ import annotations

from typing import Any

import torch

from productvlm.models.family import TinySizes
from productvlm.models.tiny_tokenizer import TokenizerSpec

# Phi-4-multimodal-instruct's turns (``<|user|>...<|end|><|assistant|>``, EOS after the last
# when no generation prompt follows), with transformers' ``<|image|>`` placeholder for a photo
PHI4MM_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image|>"
    "{% elif content['type'] == 'audio' %}<|audio|>{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% else %}{{ eos_token }}{% endif %}"
)
PHI4MM_SPEC = TokenizerSpec(
    special=("<unk>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
             "<|image|>", "<|audio|>"),
    bos=None, eos="<|endoftext|>", pad="<|endoftext|>",
    additional=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    chat_template=PHI4MM_TEMPLATE,
    named=(("image_token", "<|image|>"), ("audio_token", "<|audio|>")),
)


def tiny_config(tokenizer: Any, text: dict[str, Any], sizes: TinySizes) -> Any:
    """A small config: 14-px patches of a crop of ``image_size``, pooled 2 x 2 (as the real
    448-px crops are)."""
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    vision = transformers.Phi4MultimodalVisionConfig(
        hidden_size=sizes.vision_hidden, intermediate_size=sizes.vision_hidden * 2,
        num_hidden_layers=sizes.vision_layers, num_attention_heads=4,
        image_size=sizes.image_size, patch_size=14, crop_size=sizes.image_size,
        image_token_id=ids("<|image|>"))
    audio = transformers.Phi4MultimodalAudioConfig(  # never fed: photos only
        num_blocks=1, hidden_size=32, num_attention_heads=4, intermediate_size=48,
        depthwise_separable_out_channel=32, nemo_conv_channels=32,
        audio_token_id=ids("<|audio|>"))
    return transformers.Phi4MultimodalConfig(
        **{k: v for k, v in text.items() if k != "bos_token_id"},
        bos_token_id=tokenizer.eos_token_id,
        original_max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta,
                         "partial_rotary_factor": 1.0},
        vision_config=vision, audio_config=audio)


def tiny_processor(tokenizer: Any, config: Any, crops: int) -> Any:
    """The processor for ``config``'s crop size; ``crops``: the most crops a photo
    (``dynamic_hd``)."""
    import transformers

    from .images import Phi4MultimodalImageProcessorPil

    side = config.vision_config.crop_size
    images = Phi4MultimodalImageProcessorPil(size={"height": side, "width": side},
                                             patch_size=config.vision_config.patch_size,
                                             dynamic_hd=crops)
    return transformers.Phi4MultimodalProcessor(
        image_processor=images, audio_processor=transformers.Phi4MultimodalFeatureExtractor(),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def siglip_init(tower: torch.nn.Module) -> None:
    """SigLIP's own initialisation of its attention and MLP weights (Xavier-uniform, biases
    near 0). transformers draws Phi-4's from N(0, 1), which a pretrained checkpoint replaces
    but which leaves a model trained from scratch with image features in the hundreds: its
    vision warm-up then learns nothing (demo: validation category accuracy 0.23 against
    Phi-3's 0.91)."""
    with torch.no_grad():
        for name, module in tower.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in (
                    "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.normal_(module.bias, std=1e-6)


__all__ = ["PHI4MM_SPEC", "PHI4MM_TEMPLATE", "siglip_init", "tiny_config", "tiny_processor"]
