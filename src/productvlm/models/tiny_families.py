"""Tiny random Qwen2.5-VL, Qwen3-VL, SmolVLM (Idefics3), SmolVLM2 and Phi-4-multimodal
models, for tests and the demo.

Each is transformers' own class on a small config, with a tokenizer trained on the catalog's
text that has the family's special tokens and a chat template written from the public model
cards (Qwen2.5-VL-Instruct's ChatML with ``<|vision_start|><|image_pad|><|vision_end|>``;
SmolVLM-Instruct's ``User:<image>...<end_of_utterance>`` turns; Phi-4-multimodal-instruct's
``<|user|><|image|>...<|end|><|assistant|>``), and the family's own processor (Phi-4's
image processor: :mod:`productvlm.models.phi4mm_images`). A folder it writes loads with
``AutoModelForImageTextToText`` (Phi-4: ``AutoModelForCausalLM``) and ``AutoProcessor`` like
a Hub checkpoint (given torchvision, which the processors' video half and Phi-4's image
processor need; productvlm loads them without it, see :func:`families.image_only_processor`
and :func:`phi4mm_images.processor_class`).

>>> folder = save_tiny_family("qwen2_5_vl", "runs/tiny-qwen", ["Medium Lola Bag"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from productvlm.models.tiny_tokenizer import TokenizerSpec, train_tiny_tokenizer

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

SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_GRID = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
SMOLVLM = TokenizerSpec(
    special=("<unk>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>",
             "<fake_token_around_image>", "<image>", "<global-img>", *_GRID),
    bos=None, eos="<end_of_utterance>", pad="<|endoftext|>",
    additional=("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                "<global-img>", *_GRID),
    chat_template=SMOLVLM_TEMPLATE,
)
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
PHI4MM = TokenizerSpec(
    special=("<unk>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
             "<|image|>", "<|audio|>"),
    bos=None, eos="<|endoftext|>", pad="<|endoftext|>",
    additional=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    chat_template=PHI4MM_TEMPLATE,
    named=(("image_token", "<|image|>"), ("audio_token", "<|audio|>")),
)
SPECS = {"qwen2_5_vl": QWEN, "qwen3_vl": QWEN, "smolvlm": SMOLVLM, "smolvlm2": SMOLVLM,
         "phi4mm": PHI4MM}


def tiny_tokenizer(family: str, texts: Iterable[str], vocab_size: int = 1024) -> Any:
    """A small tokenizer of ``family`` trained on ``texts``."""
    return train_tiny_tokenizer(texts, vocab_size, SPECS[family])


def tiny_config(family: str, tokenizer: Any, *, hidden_size: int = 128, layers: int = 4,
                vision_hidden: int = 64, vision_layers: int = 4, image_size: int = 112,
                rope_theta: float = 10000.0) -> Any:
    """A small config of ``family`` whose special-token ids are ``tokenizer``'s.

    ``rope_theta``: a small one makes positions matter within a short answer (tests that
    check positions use it)."""
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2, "num_hidden_layers": layers,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": ids("<|endoftext|>")}
    if family in ("qwen2_5_vl", "qwen3_vl"):
        head = hidden_size // 4
        # multimodal rope: the head's frequencies split over time, height and width
        rope = {"rope_type": "default", "rope_theta": rope_theta,
                "mrope_section": [head // 8, head * 3 // 16, head * 3 // 16]}
        vision = {"depth": vision_layers, "hidden_size": vision_hidden,
                  "intermediate_size": vision_hidden * 2, "num_heads": 4,
                  "out_hidden_size": hidden_size, "spatial_merge_size": 2,
                  "temporal_patch_size": 2}
        common = {"image_token_id": ids("<|image_pad|>"),
                  "video_token_id": ids("<|video_pad|>"),
                  "vision_start_token_id": ids("<|vision_start|>"),
                  "vision_end_token_id": ids("<|vision_end|>"), "tie_word_embeddings": False,
                  "bos_token_id": ids("<|endoftext|>"), "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": tokenizer.pad_token_id}
        if family == "qwen2_5_vl":
            return transformers.Qwen2_5_VLConfig(
                text_config={**text, "rope_scaling": {"type": "mrope", **rope}},
                vision_config={**vision, "patch_size": 14, "window_size": 56,
                               "fullatt_block_indexes": [vision_layers - 1]},
                **common)
        return transformers.Qwen3VLConfig(
            text_config={**text, "head_dim": head,
                         "rope_parameters": {**rope, "mrope_interleaved": True}},
            vision_config={**vision, "patch_size": 16, "num_position_embeddings": 64,
                           "deepstack_visual_indexes": [vision_layers // 2]},
            **common)
    if family in ("smolvlm", "smolvlm2"):
        cls = transformers.Idefics3Config if family == "smolvlm" else transformers.SmolVLMConfig
        return cls(
            text_config={**text, "model_type": "llama", "head_dim": hidden_size // 4,
                         "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta}},
            vision_config={"hidden_size": vision_hidden, "intermediate_size": vision_hidden * 2,
                           "num_hidden_layers": vision_layers, "num_attention_heads": 4,
                           "image_size": image_size, "patch_size": 14},
            scale_factor=2, image_token_id=ids("<image>"), tie_word_embeddings=False,
        )
    if family == "phi4mm":
        # 14-px patches of a crop of image_size, pooled 2 x 2 (as the real 448-px crops are)
        vision = transformers.Phi4MultimodalVisionConfig(
            hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size,
            patch_size=14, crop_size=image_size, image_token_id=ids("<|image|>"))
        audio = transformers.Phi4MultimodalAudioConfig(  # never fed: photos only
            num_blocks=1, hidden_size=32, num_attention_heads=4, intermediate_size=48,
            depthwise_separable_out_channel=32, nemo_conv_channels=32,
            audio_token_id=ids("<|audio|>"))
        return transformers.Phi4MultimodalConfig(
            **{k: v for k, v in text.items() if k != "bos_token_id"},
            bos_token_id=tokenizer.eos_token_id,
            original_max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                             "partial_rotary_factor": 1.0},
            vision_config=vision, audio_config=audio)
    raise ValueError(f"no tiny {family} model: use qwen2_5_vl, qwen3_vl, smolvlm, smolvlm2 "
                     "or phi4mm")


def tiny_processor(family: str, tokenizer: Any, config: Any, crops: int = 1) -> Any:
    """The family's processor for ``config``'s image sizes; ``crops``: Phi-4-multimodal's
    most crops a photo (``dynamic_hd``; 1, as the demo's Phi-3: the whole and one crop)."""
    import transformers

    from productvlm.models.families import image_only_processor

    if family in ("qwen2_5_vl", "qwen3_vl"):
        patch = config.vision_config.patch_size
        unit = patch * 2  # a patch merged 2 x 2: one token
        images = transformers.Qwen2VLImageProcessorPil(min_pixels=unit * unit * 4,
                                                       max_pixels=unit * unit * 16,
                                                       patch_size=patch)
        cls = image_only_processor(transformers.Qwen2_5_VLProcessor if family == "qwen2_5_vl"
                                   else transformers.Qwen3VLProcessor)
        return cls(image_processor=images, tokenizer=tokenizer,
                   chat_template=tokenizer.chat_template)
    if family == "phi4mm":
        from productvlm.models.phi4mm_images import Phi4MultimodalImageProcessorPil

        side = config.vision_config.crop_size
        images = Phi4MultimodalImageProcessorPil(size={"height": side, "width": side},
                                                 patch_size=config.vision_config.patch_size,
                                                 dynamic_hd=crops)
        return transformers.Phi4MultimodalProcessor(
            image_processor=images, audio_processor=transformers.Phi4MultimodalFeatureExtractor(),
            tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    side = config.vision_config.image_size
    images_cls, processor_cls = (
        (transformers.Idefics3ImageProcessorPil, transformers.Idefics3Processor)
        if family == "smolvlm" else
        (transformers.SmolVLMImageProcessorPil,
         image_only_processor(transformers.SmolVLMProcessor)))
    images = images_cls(size={"longest_edge": side * 2}, max_image_size={"longest_edge": side},
                        do_image_splitting=False)
    grid = side // config.vision_config.patch_size
    return processor_cls(image_processor=images, tokenizer=tokenizer,
                         chat_template=tokenizer.chat_template,
                         image_seq_len=grid * grid // config.scale_factor ** 2)


def tiny_model(config: Any, seed: int = 0) -> Any:
    """A randomly initialised model of ``config``'s family (transformers' own class)."""
    import transformers

    from productvlm.models.families import family_of

    torch.manual_seed(seed)
    fam = family_of(config)
    model = getattr(transformers, fam.auto_class).from_config(config).eval()
    if fam.name == "phi4mm":
        _siglip_init(model.get_submodule(fam.tower[0]))
    return model


def _siglip_init(tower: torch.nn.Module) -> None:
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


def save_tiny_family(family: str, folder: str | Path, texts: Iterable[str], *,
                     vocab_size: int = 1024, seed: int = 0, crops: int = 1,
                     **sizes: Any) -> Path:
    """Write a tiny random ``family`` model with its tokenizer and processor to ``folder``.

    ``sizes``: hidden_size, layers, vision_hidden, vision_layers, image_size, rope_theta;
    ``crops``: see :func:`tiny_processor`.
    """
    folder = Path(folder)
    tok = tiny_tokenizer(family, texts, vocab_size)
    config = tiny_config(family, tok, **sizes)
    model = tiny_model(config, seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tiny_processor(family, tok, config, crops).save_pretrained(folder)
    from productvlm.models.merged import complete_processor

    complete_processor(folder)  # whole, as a Hub checkpoint is (its video processor too)
    return folder


__all__ = ["PHI4MM", "QWEN", "SMOLVLM", "save_tiny_family", "tiny_config", "tiny_model",
           "tiny_processor", "tiny_tokenizer"]
