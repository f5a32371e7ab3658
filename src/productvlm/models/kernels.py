"""Liger kernels for the decoder (``liger: true``): fused RMSNorm, SwiGLU and RoPE, and, for
transformers' own model classes, the fused linear cross-entropy that never materialises the
logits of a whole batch (the largest single tensor of a step at Phi-3's 32k vocabulary).

They are Triton kernels: a CUDA GPU and the ``liger-kernel`` package, never required (the
plain path is the default). Which of Liger's model types a family's decoder is comes from the
family table (:attr:`~productvlm.models.family.ModelFamily.liger`); Phi-3-vision's decoder is
transformers' Phi-3, patched in place, but its forward is ours (it places the image
features), so it keeps transformers' loss instead of Liger's fused one. bench/gpu_check.py
compares the loss with and without them on the device.

>>> apply_liger(model, torch.device("cuda"))  # doctest: +SKIP
'Liger kernels (phi3): rope, rms_norm, swiglu'
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from productvlm.errors import ProductVLMError
from productvlm.models.families import family_of, unwrap

KERNELS = ("rope", "rms_norm", "swiglu", "fused_linear_cross_entropy")


def liger_type(model: Any) -> str:
    """Liger's model type for ``model``'s decoder, or a one-line error where it has none.

    >>> liger_type(phi4mm_model)  # doctest: +SKIP
    Traceback (most recent call last):
    ProductVLMError: liger: no Liger kernels for Phi-4-multimodal (phi4_multimodal); ...
    """
    base = unwrap(model)
    fam, model_type = family_of(base), base.config.model_type
    found = dict(fam.liger).get(model_type)
    if found is None:
        raise ProductVLMError(f"liger: no Liger kernels for {fam.title} ({model_type}); set "
                              "liger: false")
    return found


def apply_liger(model: Any, device: torch.device) -> str:
    """Patch ``model``'s decoder (a PEFT wrapper is looked through) with Liger's kernels;
    returns what was applied, for the run's log."""
    kind = liger_type(model)
    if device.type != "cuda":
        raise ProductVLMError("liger: its kernels run on a CUDA GPU (Triton); set liger: false "
                              "on the CPU")
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        raise ProductVLMError(f"liger: needs the liger-kernel package ({err}); pip install "
                              "liger-kernel, or set liger: false") from None
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[kind]
    base = unwrap(model)
    wanted = {k: True for k in KERNELS}
    if not family_of(base).fused_loss:  # its forward computes the loss itself (see above)
        wanted["fused_linear_cross_entropy"] = False
    params = inspect.signature(apply).parameters
    kwargs = {k: v for k, v in wanted.items() if k in params}
    if "cross_entropy" in params:
        kwargs["cross_entropy"] = False  # the fused one, or transformers' own
    apply(model=base, **kwargs)
    used = ", ".join(k for k, v in kwargs.items() if v)
    return f"Liger kernels ({kind}): {used}"


__all__ = ["apply_liger", "liger_type"]
