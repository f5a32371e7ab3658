"""Processors built without their video half: photos never use it, and it needs
torchvision, which does not install beside the CPU torch wheel.

>>> image_only_processor(transformers.Qwen2_5_VLProcessor)  # doctest: +SKIP
<class 'transformers.models.qwen2_5_vl.processing_qwen2_5_vl.Qwen2_5_VLProcessor'>
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any


def lacks_video(source: str, cls: type) -> bool:
    """Whether ``cls`` takes a video processor that the local folder ``source`` was saved
    without (a processor saved where torchvision was missing): photos never use it, so it is
    then loaded without one, torchvision or not."""
    if "video_processor" not in cls.get_attributes() or not Path(source).is_dir():
        return False
    saved = Path(source) / "processor_config.json"
    return not ((Path(source) / "video_preprocessor_config.json").is_file() or (
        saved.is_file() and "video_processor" in json.loads(saved.read_text())))


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


__all__ = ["image_only_processor", "lacks_video", "torchvision_available"]
