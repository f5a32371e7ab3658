"""Tiny random SmolVLM (Idefics3) and SmolVLM2 models for tests and the demo: a config, a
tokenizer spec with SmolVLM-Instruct's ``User:<image>...<end_of_utterance>`` turns, and the
processor (see :mod:`productvlm.models.tiny_families`).

>>> SMOLVLM_SPEC.eos
'<end_of_utterance>'
"""

from __future__ import annotations

from typing import Any

from productvlm.models.family import TinySizes
from productvlm.models.image_only import image_only_processor
from productvlm.models.tiny_tokenizer import TokenizerSpec

SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_GRID = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
SMOLVLM_SPEC = TokenizerSpec(
    special=("<unk>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>",
             "<fake_token_around_image>", "<image>", "<global-img>", *_GRID),
    bos=None, eos="<end_of_utterance>", pad="<|endoftext|>",
    additional=("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                "<global-img>", *_GRID),
    chat_template=SMOLVLM_TEMPLATE,
)


def tiny_config(variant: str, tokenizer: Any, text: dict[str, Any], sizes: TinySizes) -> Any:
    """A small ``smolvlm`` (Idefics3) or ``smolvlm2`` config."""
    import transformers

    cls = transformers.Idefics3Config if variant == "smolvlm" else transformers.SmolVLMConfig
    return cls(
        text_config={**text, "model_type": "llama", "head_dim": sizes.hidden_size // 4,
                     "rope_parameters": {"rope_type": "default",
                                         "rope_theta": sizes.rope_theta}},
        vision_config={"hidden_size": sizes.vision_hidden,
                       "intermediate_size": sizes.vision_hidden * 2,
                       "num_hidden_layers": sizes.vision_layers, "num_attention_heads": 4,
                       "image_size": sizes.image_size, "patch_size": 14},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )


def tiny_processor(variant: str, tokenizer: Any, config: Any) -> Any:
    """The processor for ``config``'s image size (no splitting)."""
    import transformers

    side = config.vision_config.image_size
    images_cls, processor_cls = (
        (transformers.Idefics3ImageProcessorPil, transformers.Idefics3Processor)
        if variant == "smolvlm" else
        (transformers.SmolVLMImageProcessorPil,
         image_only_processor(transformers.SmolVLMProcessor)))
    images = images_cls(size={"longest_edge": side * 2}, max_image_size={"longest_edge": side},
                        do_image_splitting=False)
    grid = side // config.vision_config.patch_size
    return processor_cls(image_processor=images, tokenizer=tokenizer,
                         chat_template=tokenizer.chat_template,
                         image_seq_len=grid * grid // config.scale_factor ** 2)


__all__ = ["SMOLVLM_SPEC", "SMOLVLM_TEMPLATE", "tiny_config", "tiny_processor"]
