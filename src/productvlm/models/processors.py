"""The family's processor (tokenizer, image processor, chat template) and its image-size
settings, from a Hub id, a model, adapter or processor folder.

Which class loads it and what the image-size settings (:class:`ImageOptions`) become on it
is the family's (:meth:`~productvlm.models.family.ModelFamily.load_processor`): Phi-3-vision's
is ours (:class:`~productvlm.models.phi3v.Phi3VProcessor`); the others are transformers' own,
built without their video half where torchvision is missing.

>>> processor = load_processor("runs/train/adapter", num_crops=4)  # doctest: +SKIP
>>> processor = load_processor("Qwen/Qwen2.5-VL-3B-Instruct",
...                            options=ImageOptions(max_pixels=448 * 448))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.models.families import REGISTRY, ModelFamily, family_for, family_named
from productvlm.models.family import ImageOptions
from productvlm.models.loading import check_source, hub_config


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
    options = replace(options, num_crops=num_crops or options.num_crops)
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
    fam, cls_name = _processor_class(source)
    owners = {key: f for f in REGISTRY for key in f.processor_options}
    try:
        processor = fam.load_processor(source, cls_name, options, owners)
    except OSError as err:
        raise ProductVLMError(f"cannot load the processor of {source}: {err}") from err
    processor.tokenizer.structured_chat = fam.structured_prompt
    return processor


def _processor_class(source: str) -> tuple[ModelFamily, str]:
    """(family, the processor class a folder names), else the class its (or a Hub id's)
    model type uses."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = Path(source) / name
        if file.is_file():
            named = json.loads(file.read_text()).get("processor_class")
            if named:
                return family_named(str(named)), str(named)
    config = Path(source) / "config.json"
    model_type = (json.loads(config.read_text()).get("model_type") if config.is_file()
                  else hub_config(source).model_type)
    fam = family_for(str(model_type))
    try:
        return fam, fam.processor_name(str(model_type))
    except ProductVLMError as err:
        raise ProductVLMError(f"{source}: {err}") from None


__all__ = ["ImageOptions", "load_processor"]
