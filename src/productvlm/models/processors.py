"""The family's processor (tokenizer, image processor, chat template) and its image-size
settings, from a Hub id, a model, adapter or processor folder.

Phi-3-vision's is ours (:class:`Phi3VProcessor`); the others are transformers' own, built
without their video half where torchvision is missing (``families.image_only_processor``).

>>> processor = load_processor("runs/train/adapter", num_crops=4)  # doctest: +SKIP
>>> processor = load_processor("Qwen/Qwen2.5-VL-3B-Instruct",
...                            options=ImageOptions(max_pixels=448 * 448))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.models.families import family_of
from productvlm.models.loading import check_source, hub_config
from productvlm.models.phi3v import Phi3VProcessor


@dataclass(frozen=True)
class ImageOptions:
    """A family's image-size settings (None: the checkpoint's own): Phi-3-vision
    ``num_crops`` (336-px crops per image; the others ignore it, as every TrainConfig has
    one), Qwen ``min_pixels`` / ``max_pixels`` (the resized photo's area, hence its token
    count), SmolVLM ``image_splitting`` (tiles of the photo besides the whole) and
    ``longest_edge`` (the photo's longest side after resizing), Phi-4-multimodal
    ``dynamic_hd`` (most 448-px crops of a photo; each adds up to 272 tokens). Qwen's,
    SmolVLM's or Phi-4's given to another family are an error."""

    num_crops: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    image_splitting: bool | None = None
    longest_edge: int | None = None
    dynamic_hd: int | None = None


def load_processor(name_or_path: str | os.PathLike, num_crops: int | None = None,
                   options: ImageOptions | None = None) -> Any:
    """The family's processor from a Hub id, a model, adapter or processor folder.

    An adapter folder's own tokenizer files win (a run saves them beside the adapter);
    otherwise its base model's are used. ``num_crops`` / ``options`` override the saved
    image-size settings.

    >>> opts = ImageOptions(max_pixels=448 * 448)
    >>> load_processor("runs/demo/train", options=opts)  # doctest: +SKIP
    """
    options = options or ImageOptions()
    num_crops = num_crops or options.num_crops
    if (Path(name_or_path) / "tokenizer.json").is_file():  # a processor folder of its own
        source, adapter = str(name_or_path), None
    else:
        source, adapter = check_source(name_or_path)
    if adapter is not None and not (Path(source) / "tokenizer.json").is_file():
        source, _ = check_source(adapter.get("base_model_name_or_path") or "")
    if Path(source).is_dir() and not (Path(source) / "tokenizer.json").is_file():
        raise ProductVLMError(
            f"{source}: no tokenizer.json; save the processor there (processor.save_pretrained) "
            "or point at the base model"
        )
    cls_name = _processor_class(source)
    try:
        if cls_name == Phi3VProcessor.__name__:
            return Phi3VProcessor.from_pretrained(source, num_crops=num_crops)
        import transformers

        from productvlm.models.families import image_only_processor, torchvision_available

        if cls_name == "Phi4MultimodalProcessor":  # ours reads photos, torchvision or not
            from productvlm.models.phi4mm_images import processor_class

            cls = processor_class()
        else:
            cls = getattr(transformers, cls_name)
            if not torchvision_available() or _lacks_video(source, cls):
                cls = image_only_processor(cls)
        processor = cls.from_pretrained(source)
    except OSError as err:
        raise ProductVLMError(f"cannot load the processor of {source}: {err}") from err
    _apply_image_options(processor.image_processor, options)
    processor.tokenizer.structured_chat = family_of(processor).structured_prompt
    return processor


def _lacks_video(source: str, cls: type) -> bool:
    """Whether ``cls`` takes a video processor that the local folder ``source`` was saved
    without (a processor saved where torchvision was missing): photos never use it, so it is
    then loaded without one, torchvision or not."""
    if "video_processor" not in cls.get_attributes() or not Path(source).is_dir():
        return False
    saved = Path(source) / "processor_config.json"
    return not ((Path(source) / "video_preprocessor_config.json").is_file() or (
        saved.is_file() and "video_processor" in json.loads(saved.read_text())))


def _processor_class(source: str) -> str:
    """The processor class a folder names, else the one its (or a Hub id's) model type uses."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = Path(source) / name
        if file.is_file():
            named = json.loads(file.read_text()).get("processor_class")
            if named:
                return str(named)
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = Path(source) / "config.json"
    model_type = (json.loads(config.read_text()).get("model_type") if config.is_file()
                  else hub_config(source).model_type)
    if model_type == "phi3_v":
        return Phi3VProcessor.__name__
    found = PROCESSOR_MAPPING_NAMES.get(model_type)
    if not found:
        raise ProductVLMError(f"{source}: no processor is known for model_type {model_type!r}")
    return str(found)


def _apply_image_options(images: Any, options: ImageOptions) -> None:
    """Set a transformers image processor's size settings (Qwen's pixels, SmolVLM's tiles,
    Phi-4's crops)."""
    size = dict(getattr(images, "size", None) or {})
    if options.min_pixels is not None or options.max_pixels is not None:
        if "shortest_edge" not in size:
            raise ProductVLMError("min_pixels / max_pixels are Qwen-VL settings; this model's "
                                  "processor does not take them")
        for key, value in (("shortest_edge", options.min_pixels),
                           ("longest_edge", options.max_pixels)):
            if value is not None:
                size[key] = value
        images.size = size  # Qwen's min and max pixels (its older min_pixels / max_pixels)
    if options.image_splitting is not None or options.longest_edge is not None:
        if not hasattr(images, "do_image_splitting"):
            raise ProductVLMError("image_splitting / longest_edge are SmolVLM settings; this "
                                  "model's processor does not take them")
        if options.image_splitting is not None:
            images.do_image_splitting = options.image_splitting
        if options.longest_edge is not None:
            images.size = {**size, "longest_edge": options.longest_edge}
    if options.dynamic_hd is not None:
        if not hasattr(images, "dynamic_hd"):
            raise ProductVLMError("dynamic_hd is a Phi-4-multimodal setting; this model's "
                                  "processor does not take it")
        images.dynamic_hd = options.dynamic_hd


__all__ = ["ImageOptions", "load_processor"]
