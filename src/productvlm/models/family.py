"""What a model family is: the protocol every family package implements, with the defaults
that transformers' own model classes share.

A family (``models/<family>/``) exports one :class:`ModelFamily` object; the registry
(:mod:`productvlm.models.families`) lists them, one line each. The generic code (loading,
processors, merged/, the vision warm-up, the trust measures, scoring, the tiny test models)
asks the object and never tests which family it holds. Each object keeps its facts as data
(which modules LoRA wraps, which are the image side, ...) and its behaviour as methods
(how it loads, how its processor takes image-size settings, where its image features are
read, its rope offsets, how merged/ is written, how a tiny model of it is built).

This module imports no family package: they import it.

>>> ImageOptions(max_pixels=448 * 448).given()
{'max_pixels': 200704}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from productvlm.errors import ProductVLMError
from productvlm.models.image_only import image_only_processor, lacks_video, torchvision_available

#: Where a family's pooled image features are read (:meth:`ModelFamily.feature_tap`):
#: ``images``: the module's output is each image's tokens; ``output``: the module's output is
#: the decoder's input embeddings, read at the image-token positions; ``input``: the module
#: (the decoder) takes those embeddings as its ``inputs_embeds`` argument.
TapKind = Literal["images", "output", "input"]
#: The Hub checkpoint's shard size: a 4.2B bf16 model is two shards and an index, as there.
HUB_SHARD_SIZE = "5GB"


@dataclass(frozen=True)
class ImageOptions:
    """The image-size settings a run may give (None: the checkpoint's own). Each family's
    object says which are its own (:attr:`ModelFamily.processor_options`) and what they
    become on its processor (:meth:`ModelFamily.apply_image_options`): Phi-3-vision
    ``num_crops`` (336-px crops per image; every TrainConfig has one, so the other families
    ignore it), Qwen ``min_pixels`` / ``max_pixels`` (the resized photo's area, hence its
    token count), SmolVLM ``image_splitting`` (tiles of the photo besides the whole) and
    ``longest_edge`` (the photo's longest side after resizing), Phi-4-multimodal
    ``dynamic_hd`` (most 448-px crops of a photo; each adds up to 272 tokens). Another
    family's settings given to a family are an error."""

    num_crops: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    image_splitting: bool | None = None
    longest_edge: int | None = None
    dynamic_hd: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings given (not None), ``num_crops`` aside (every run has one)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "num_crops" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class TinySizes:
    """The sizes of a tiny random model (tests, the demo)."""

    hidden_size: int = 128
    layers: int = 4
    vision_hidden: int = 64
    vision_layers: int = 4
    image_size: int = 112
    rope_theta: float = 10000.0  # a small one makes positions matter within a short answer


@dataclass(frozen=True)
class ModelFamily:
    """One model family: its facts as data, what differs as methods (defaults: a family
    that transformers' own classes load)."""

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
    # class-name prefixes of its models, configs and processors
    class_prefixes: tuple[str, ...] = field(default=())
    # where the image-token positions are: config attribute (dotted) of the image token's id
    image_token_attr: str = "image_token_id"
    processor_options: tuple[str, ...] = field(default=())  # image-size settings it takes
    # how its settings are named in a message ("Qwen-VL settings")
    options_title: str = ""
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
    # Liger's fused linear cross-entropy may replace the loss (False: the family's forward
    # computes the loss itself)
    fused_loss: bool = True
    # (model_type, what to load instead) of its remote-code checkpoints (never run here)
    remote_formats: tuple[tuple[str, str], ...] = field(default=())
    # the processed photo's tensors mirror as tensors (:meth:`mirror_photo`): the warm-up
    # processes each photo once and mirrors it on the fly
    mirrors_views: bool = False
    # processor tensors padded with ones when photos are batched (masks of empty crops)
    padded_with_ones: tuple[str, ...] = field(default=())
    # vLLM (0.32) serves LoRA adapters of it (language-model LoRA) on its base model
    vllm_lora: bool = True
    # the names save_tiny_family takes for it (a family's checkpoint formats)
    tiny_variants: tuple[str, ...] = field(default=())

    # -- loading ---------------------------------------------------------------------------

    def load(self, source: str, **kwargs: Any) -> nn.Module:
        """The model at ``source`` (``from_pretrained`` kwargs: dtype, attention, ...)."""
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(source, **kwargs)

    def vision_lora_parts(self, config: Any) -> tuple[str, ...]:
        """Regexes of the image side's linear layers LoRA wraps (``lora_vision``)."""
        return (self.vision_lora,)

    def vision_param(self, name: str, tower: bool = False) -> bool:
        """Whether parameter ``name`` belongs to the image side (``tower``: to its encoder);
        a PEFT prefix is allowed."""
        return any(f"{m}." in name for m in (self.tower if tower else self.vision_modules))

    def get_text_model(self, model: Any) -> nn.Module:
        """The decoder of ``model`` (not a PEFT wrapper)."""
        return model.get_submodule(self.text_model)

    def image_token_id(self, config: Any) -> int:
        """The id of the token that stands for one image feature in its prompts."""
        value = config
        for attr in self.image_token_attr.split("."):
            value = getattr(value, attr)
        return int(value)

    # -- processor -------------------------------------------------------------------------

    def processor_name(self, model_type: str) -> str:
        """The processor class of a checkpoint whose folder names none."""
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        found = PROCESSOR_MAPPING_NAMES.get(model_type)
        if not found:
            raise ProductVLMError(f"no processor is known for model_type {model_type!r}")
        return str(found)

    def processor_class(self, name: str, source: str) -> type:
        """The class that loads a processor saved as class ``name`` at ``source``: the
        transformers class, without its video half where torchvision is missing or the
        folder was saved without one."""
        import transformers

        cls = getattr(transformers, name)
        if not torchvision_available() or lacks_video(source, cls):
            cls = image_only_processor(cls)
        return cls

    def load_processor(self, source: str, name: str, options: ImageOptions,
                       owners: Mapping[str, ModelFamily]) -> Any:
        """Its processor from ``source`` with ``options`` applied; ``owners``: which family
        each image-size setting belongs to (for the message when another's is given)."""
        processor = self.processor_class(name, source).from_pretrained(source)
        self.apply_image_options(processor.image_processor, options, owners)
        return processor

    def apply_image_options(self, images: Any, options: ImageOptions,
                            owners: Mapping[str, ModelFamily]) -> None:
        """Set ``options`` on its image processor; another family's settings are an error."""
        for key in options.given():
            if key not in self.processor_options:
                owner = owners[key]
                keys = owner.processor_options
                what = (f"{' / '.join(keys)} are {owner.options_title} settings; this model's "
                        "processor does not take them") if len(keys) > 1 else (
                        f"{keys[0]} is a {owner.options_title} setting; this model's processor "
                        "does not take it")
                raise ProductVLMError(what)

    def vllm_processor_kwargs(self, num_crops: int | None) -> dict[str, Any]:
        """The image-size settings vLLM's processor for it takes (``mm_processor_kwargs``)."""
        return {}

    # -- the image side: vision warm-up and trust measures ----------------------------------

    def image_side(self, model: nn.Module) -> nn.Module:
        """Its image side's modules (what the vision warm-up trains)."""
        return nn.ModuleList([model.get_submodule(m) for m in self.vision_modules])

    def warmup_photo(self, image_processor: Any, image: Any) -> dict[str, torch.Tensor]:
        """One photo's processed tensors, as the warm-up keeps them."""
        out = image_processor([[image]], return_tensors="pt")
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def mirror_photo(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The processed mirror image of a photo, from its tensors (``mirrors_views``)."""
        raise NotImplementedError(f"{self.title}: photos are processed mirrored instead")

    def join_photos(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Photos' tensors batched as its processor batches them: one after another along
        dim 0, padded to the most tiles or crops (zeros, or ones for ``padded_with_ones``),
        which the models skip."""
        return {key: join_tensors([x[key] for x in items], key in self.padded_with_ones)
                for key in items[0]}

    def image_features(self, model: nn.Module, side: nn.Module,
                       batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per photo of a warm-up batch, the mean of the image tokens the decoder reads."""
        raise NotImplementedError(f"{self.title}: no image features")

    def feature_tap(self, model: nn.Module) -> tuple[nn.Module, TapKind]:
        """Where the trust measures catch the image features of a forward pass."""
        if self.embeds_module:
            return model.get_submodule(self.embeds_module), "output"
        return self.get_text_model(model), "input"

    def run_image_side(self, model: nn.Module, batch: dict[str, Any]) -> None:
        """The least forward that passes :meth:`feature_tap` (one of the prompt)."""
        model.model(**batch)

    # -- scoring -----------------------------------------------------------------------------

    def rope_offsets(self, model: Any) -> torch.Tensor | None:
        """Per row, what its rope positions add to a text token's place after the prompt
        (None: positions are places)."""
        return None

    # -- merged/ -----------------------------------------------------------------------------

    def save_merged(self, merged: nn.Module, processor: Any, out: str | Path,
                    base: str | Path) -> None:
        """Write a merged model as a drop-in for ``base``, in the family's Hub format."""
        merged.save_pretrained(out, max_shard_size=HUB_SHARD_SIZE)
        processor.save_pretrained(out)
        self.complete_folder(out)

    def complete_folder(self, folder: str | Path) -> list[str]:
        """Add to a saved folder the processor parts its processor class loads besides the
        ones photos use; returns what was added."""
        return []

    # -- tiny models for tests --------------------------------------------------------------

    def tiny_spec(self, variant: str) -> Any:
        """The tokenizer spec (:class:`~productvlm.models.tiny_tokenizer.TokenizerSpec`)."""
        raise ProductVLMError(f"{self.title}: no tiny {variant} model")

    def tiny_config(self, variant: str, tokenizer: Any, text: dict[str, Any],
                    sizes: TinySizes) -> Any:
        """A small config whose special-token ids are ``tokenizer``'s; ``text``: the
        decoder's settings shared by every family."""
        raise ProductVLMError(f"{self.title}: no tiny {variant} model")

    def tiny_processor(self, variant: str, tokenizer: Any, config: Any, crops: int) -> Any:
        """Its processor for ``config``'s image sizes."""
        raise ProductVLMError(f"{self.title}: no tiny {variant} model")

    def init_tiny(self, model: nn.Module) -> None:
        """Initialise a randomly drawn tiny model where transformers' draw does not train."""


def join_tensors(parts: Sequence[torch.Tensor], ones: bool = False) -> torch.Tensor:
    """Photos' tensors one after another along dim 0, padded to the largest (zeros; ones
    with ``ones``).

    >>> join_tensors([torch.zeros(1, 2), torch.zeros(1, 3)]).shape
    torch.Size([2, 3])
    """
    fill = 1.0 if ones else 0.0
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = []
    for p in parts:
        pad = [x for d in reversed(range(1, p.dim())) for x in (0, shape[d - 1] - p.shape[d])]
        padded.append(nn.functional.pad(p, pad, value=fill) if any(pad) else p)
    return torch.cat(padded)


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


__all__ = ["HUB_SHARD_SIZE", "ImageOptions", "ModelFamily", "TapKind", "TinySizes",
           "join_tensors", "kv_width", "unwrap"]
