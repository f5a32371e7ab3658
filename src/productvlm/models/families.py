"""The model families productvlm fine-tunes, and the little that differs between them.

Everything else (collation, the Trainer, W&B, constrained decoding, the Predictor, evaluate,
serve, audit) is one code path. What a family decides (torchtune's builders per family, kept
to a table):

* which class loads it: Phi-3-vision is native here (:mod:`productvlm.models.phi3v`);
  Qwen2.5-VL / Qwen3-VL, SmolVLM (Idefics3 / SmolVLM2) and Phi-4-multimodal are
  transformers' own classes;
* how a prompt with a photo is written for its chat template (Phi-3's ``<|image_1|>`` tag in
  the text, or an ``{"type": "image"}`` part); the processor turns it into ids;
* which modules LoRA wraps, in the decoder and on the image side, and which parameters are
  the image side (frozen by ``freeze_vision``, given ``vision_lr``, kept out of 4-bit);
* the processor's image-size settings: Phi-3's crops, Qwen's min/max pixels, SmolVLM's
  image splitting, Phi-4's most crops (``dynamic_hd``);
* what a photo task never uses and keeps frozen (Phi-4-multimodal's speech encoder), and
  the adapters a checkpoint ships that are merged in at load (Phi-4-multimodal's vision
  LoRA: its answers about images are made with it; its speech LoRA is left out).

The answer's end token comes from the chat template itself (see :mod:`productvlm.prompts`).

>>> family_for("qwen2_5_vl").name, family_for("idefics3").name
('qwen2_5_vl', 'smolvlm')
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from productvlm.errors import ProductVLMError


@dataclass(frozen=True)
class Family:
    """One model family: the facts above, as data."""

    name: str
    title: str  # for messages and the README
    model_types: tuple[str, ...]  # config.json's model_type values it loads
    structured_prompt: bool  # chat content as [{"type": "image"}, {"type": "text"}]
    decoder: str  # regex of the decoder layers' module names
    decoder_targets: tuple[str, ...]  # LoRA's default linear layers there
    vision_modules: tuple[str, ...]  # module-name prefixes of the image side
    tower: tuple[str, ...]  # ... of its encoder alone, what freeze_vision freezes (the
    # projection into the decoder stays trainable)
    vision_lora: str  # regex of the image side's linear layers LoRA may wrap
    text_model: str  # the decoder (embeddings to last hidden state), from the top model
    # where the image-token positions are: config attribute (dotted) of the image token's id
    image_token_attr: str = "image_token_id"
    processor_options: tuple[str, ...] = field(default=())  # image-size settings it takes
    native: bool = False  # our own implementation, not transformers' classes
    auto_class: str = "AutoModelForImageTextToText"  # transformers' class that loads it
    pixels: str = "pixel_values"  # the processor's image tensor (cast to the model's dtype)
    # the module whose output is the decoder's input embeddings with the image features in
    # place, where the decoder itself takes ids ("": the decoder's inputs_embeds argument)
    embeds_module: str = ""
    frozen: tuple[str, ...] = field(default=())  # module prefixes a photo task never uses
    # subfolders of LoRA adapters the checkpoint ships that are merged in at load
    merged_adapters: tuple[str, ...] = field(default=())
    # attention classes of the image encoder that transformers marks causal by mistake
    bidirectional: tuple[str, ...] = field(default=())
    # the module (from the top model) whose ``get_rope_index`` gives multimodal rope
    # positions, which a packed batch computes per sample ("": plain 1-D positions)
    rope_index: str = ""
    # image k of a prompt is token id -k (Phi-3-vision): a packed row renumbers them
    numbered_image_tags: bool = False
    # (model_type, the model type whose kernels Liger applies to its decoder) pairs
    liger: tuple[tuple[str, str], ...] = field(default=())


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="phi3v", title="Phi-3 / Phi-3.5-vision", model_types=("phi3_v",),
            structured_prompt=False,
            decoder=r"model\.layers\.\d+\.(self_attn|mlp)",
            decoder_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
            vision_modules=("model.vision_embed_tokens",),
            tower=("model.vision_embed_tokens.img_processor",),
            vision_lora="",  # built from the config: only the CLIP layers that feed features
            text_model="model",
            processor_options=("num_crops",), native=True, numbered_image_tags=True,
            liger=(("phi3_v", "phi3"),),  # the decoder is transformers' Phi-3
        ),
        Family(
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
            text_model="model.language_model",
            processor_options=("min_pixels", "max_pixels"), rope_index="model",
            liger=(("qwen2_5_vl", "qwen2_5_vl"), ("qwen2_vl", "qwen2_vl"),
                   ("qwen3_vl", "qwen3_vl")),
        ),
        Family(
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
            text_model="model.text_model",
            processor_options=("image_splitting", "longest_edge"),
            liger=(("smolvlm", "smolvlm"),),
        ),
        Family(
            name="phi4mm", title="Phi-4-multimodal", model_types=("phi4_multimodal",),
            structured_prompt=True,
            decoder=r"model\.layers\.\d+\.(self_attn|mlp)",
            decoder_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
            vision_modules=("model.embed_tokens_extend.image_embed",),
            tower=("model.embed_tokens_extend.image_embed.img_processor",),
            vision_lora=(r"model\.embed_tokens_extend\.image_embed\.img_processor\.encoder\."
                         r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
                         r"|model\.embed_tokens_extend\.image_embed\.img_projection_(up|down)"),
            text_model="model",
            processor_options=("dynamic_hd",),
            auto_class="AutoModelForCausalLM", pixels="image_pixel_values",
            image_token_attr="vision_config.image_token_id",
            embeds_module="model.embed_tokens_extend",
            frozen=("model.embed_tokens_extend.audio_embed",),  # the speech encoder
            merged_adapters=("vision-lora",),  # the model card's image answers use it
            # transformers 5.24 sets is_causal = True on its SigLIP tower's attention: with SDPA
            # and no padded crop in the batch a patch then sees only the patches before it,
            # with one it sees them all (eager attention always does); README, Model families
            bidirectional=("Phi4MultimodalVisionAttention",),
        ),
    )
}
#: the names `--model-family` takes
FAMILY_NAMES = tuple(FAMILIES)


def family_for(model_type: str) -> Family:
    """The family that loads checkpoints of ``model_type`` (config.json's), or a clear error.

    >>> family_for("phi3_v").name
    'phi3v'
    """
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    if model_type in REMOTE_CODE_FORMATS:
        raise ProductVLMError(f"model_type {model_type!r}: {REMOTE_CODE_FORMATS[model_type]}")
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise ProductVLMError(
        f"model_type {model_type!r} is not a family productvlm fine-tunes; it loads {known}"
    )


#: model types of a family's remote-code checkpoints (productvlm runs no remote code), and
#: what to load instead
REMOTE_CODE_FORMATS = {
    "phi4mm": "Phi-4-multimodal's remote-code format (the Hub repo's main branch); load its "
              "transformers format (model_type phi4_multimodal; transformers' own tests use "
              "revision refs/pr/70): hf download microsoft/Phi-4-multimodal-"
              "instruct --revision refs/pr/70 --local-dir DIR, then --model DIR",
}


def family_of(obj: Any) -> Family:
    """The family of a model, a config or a processor (by its class or ``model_type``).

    >>> family_of(model).name  # doctest: +SKIP
    'qwen2_5_vl'
    """
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    if model_type:
        return family_for(model_type)
    name = type(obj).__name__
    for prefix, fam in (("Phi3V", "phi3v"), ("Qwen", "qwen2_5_vl"), ("Idefics3", "smolvlm"),
                        ("SmolVLM", "smolvlm"), ("Phi4Multimodal", "phi4mm")):
        if name.startswith(prefix):
            return FAMILIES[fam]
    raise ProductVLMError(f"{name}: not a model, config or processor of a known family")


def kv_width(text_config: Any) -> int:
    """Width of a decoder layer's K (and V): KV heads x head size (grouped KV counted).

    >>> from types import SimpleNamespace as C
    >>> kv_width(C(hidden_size=64, num_attention_heads=4, num_key_value_heads=2))
    32
    """
    heads = text_config.num_attention_heads
    head = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return (getattr(text_config, "num_key_value_heads", None) or heads) * head


def unwrap(model: Any) -> Any:
    """The model inside a PEFT wrapper (itself if there is none)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def text_model(model: Any) -> Any:
    """The decoder of ``model`` (a PEFT wrapper is looked through): what the price scoring
    runs on the KV cache, and where the image features are read as it receives them."""
    base = unwrap(model)
    return base.get_submodule(family_of(base).text_model)


def image_token_id(config: Any) -> int:
    """The id of the token that stands for one image feature in ``config``'s (a model's)
    prompts.

    >>> image_token_id(model.config)  # doctest: +SKIP
    151655
    """
    config = getattr(config, "config", config)
    value = config
    for attr in family_of(config).image_token_attr.split("."):
        value = getattr(value, attr)
    return int(value)


def vision_param(fam: Family, name: str, tower: bool = False) -> bool:
    """Whether parameter ``name`` belongs to the image side (``tower``: to its encoder); a
    PEFT prefix is allowed."""
    return any(f"{m}." in name for m in (fam.tower if tower else fam.vision_modules))


@cache
def image_only_processor(cls: type) -> type:
    """``cls`` without its video half, for installs without torchvision.

    transformers' Qwen2.5-VL and SmolVLM2 processors carry a video processor that needs
    torchvision, which does not install beside the CPU torch wheel. Photos never use it, so
    the processor is built from its image processor and tokenizer alone; the class keeps its
    name, so what it saves is the family's own Hub format.
    """

    def get_attributes(klass: type) -> list[str]:
        return [a for a in cls.get_attributes() if a != "video_processor"]

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None,
                 video_processor: Any = None, image_seq_len: int = 169,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        cls.__init__(self, image_processor, tokenizer, video_processor,
                     image_seq_len=image_seq_len, chat_template=chat_template, **kwargs)

    body: dict[str, Any] = {"get_attributes": classmethod(get_attributes),
                            "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    params = inspect.signature(cls.__init__).parameters
    if "video_processor" in params and params["video_processor"].default is params[
            "video_processor"].empty:
        # SmolVLM2's requires it; transformers reads the names of __init__'s arguments to
        # know what to save and load (image_seq_len), so they are SmolVLM2's own
        if set(params) - {"self", "image_processor", "tokenizer", "video_processor",
                          "image_seq_len", "chat_template", "kwargs"}:
            raise TypeError(f"{cls.__name__}: arguments productvlm does not know")
        body["__init__"] = __init__
    return type(cls.__name__, (cls,), body)


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


__all__ = ["FAMILIES", "FAMILY_NAMES", "Family", "family_for", "family_of",
           "image_only_processor", "image_token_id", "kv_width", "text_model",
           "torchvision_available", "unwrap", "vision_param"]
