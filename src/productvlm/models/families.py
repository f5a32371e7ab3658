"""The model families productvlm fine-tunes: the registry, one line a family.

Everything else (collation, the Trainer, W&B, constrained decoding, the Predictor, evaluate,
serve, audit) is one code path. What differs between families is each family package's one
object (:class:`~productvlm.models.family.ModelFamily`: its facts as data, its behaviour as
methods), torchtune's builders per family kept to a table:

* :mod:`productvlm.models.phi3v`: Phi-3 / Phi-3.5-vision, our own classes;
* :mod:`productvlm.models.qwen_vl`: Qwen2.5-VL / Qwen3-VL, transformers' classes;
* :mod:`productvlm.models.smolvlm`: SmolVLM / SmolVLM2 (Idefics3), transformers' classes;
* :mod:`productvlm.models.phi4mm`: Phi-4-multimodal, transformers' classes.

A fifth family is a new folder beside them and one line in :data:`REGISTRY`
(docs/architecture.md, Adding a model family). The answer's end token comes from the chat
template itself (see :mod:`productvlm.prompts`).

>>> family_for("qwen2_5_vl").name, family_for("idefics3").name
('qwen2_5_vl', 'smolvlm')
"""

from __future__ import annotations

from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.models.family import ModelFamily, kv_width, unwrap
from productvlm.models.image_only import image_only_processor, torchvision_available
from productvlm.models.phi3v import PHI3V
from productvlm.models.phi4mm import PHI4MM
from productvlm.models.qwen_vl import QWEN_VL
from productvlm.models.smolvlm import SMOLVLM

#: every family, in the order --model-family lists them
REGISTRY: tuple[ModelFamily, ...] = (
    PHI3V,
    QWEN_VL,
    SMOLVLM,
    PHI4MM,
)
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in REGISTRY}
#: the names `--model-family` takes
FAMILY_NAMES = tuple(FAMILIES)
#: model types of a family's remote-code checkpoints (productvlm runs no remote code), and
#: what to load instead
REMOTE_CODE_FORMATS = {t: why for f in REGISTRY for t, why in f.remote_formats}


def family_for(model_type: str) -> ModelFamily:
    """The family that loads checkpoints of ``model_type`` (config.json's), or a clear error.

    >>> family_for("phi3_v").name
    'phi3v'
    """
    for fam in REGISTRY:
        if model_type in fam.model_types:
            return fam
    if model_type in REMOTE_CODE_FORMATS:
        raise ProductVLMError(f"model_type {model_type!r}: {REMOTE_CODE_FORMATS[model_type]}")
    known = ", ".join(t for f in REGISTRY for t in f.model_types)
    raise ProductVLMError(
        f"model_type {model_type!r} is not a family productvlm fine-tunes; it loads {known}"
    )


def family_named(class_name: str) -> ModelFamily:
    """The family of a model, config or processor class, by its name.

    >>> family_named("Idefics3Processor").name
    'smolvlm'
    """
    for fam in REGISTRY:
        if class_name.startswith(fam.class_prefixes):
            return fam
    raise ProductVLMError(f"{class_name}: not a model, config or processor of a known family")


def family_of(obj: Any) -> ModelFamily:
    """The family of a model, a config or a processor (by its class or ``model_type``).

    >>> family_of(model).name  # doctest: +SKIP
    'qwen2_5_vl'
    """
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    if model_type:
        return family_for(model_type)
    return family_named(type(obj).__name__)


def text_model(model: Any) -> Any:
    """The decoder of ``model`` (a PEFT wrapper is looked through): what the price scoring
    runs on the KV cache, and where the image features are read as it receives them."""
    base = unwrap(model)
    return family_of(base).get_text_model(base)


def image_token_id(config: Any) -> int:
    """The id of the token that stands for one image feature in ``config``'s (a model's)
    prompts.

    >>> image_token_id(model.config)  # doctest: +SKIP
    151655
    """
    config = getattr(config, "config", config)
    return family_of(config).image_token_id(config)


def vision_param(fam: ModelFamily, name: str, tower: bool = False) -> bool:
    """Whether parameter ``name`` belongs to the image side (``tower``: to its encoder); a
    PEFT prefix is allowed."""
    return fam.vision_param(name, tower)


__all__ = ["FAMILIES", "FAMILY_NAMES", "REGISTRY", "ModelFamily", "family_for",
           "family_named", "family_of", "image_only_processor", "image_token_id", "kv_width",
           "text_model", "torchvision_available", "unwrap", "vision_param"]
