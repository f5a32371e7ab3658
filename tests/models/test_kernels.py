"""Liger kernels (models/kernels.py): which families have them, and clear errors where they
cannot run. The kernels themselves are Triton (a CUDA GPU); bench/gpu_check.py compares the
loss with and without them there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from productvlm.errors import ProductVLMError
from productvlm.models.kernels import apply_liger, liger_type
from productvlm.models.phi3v.tiny import tiny_config
from productvlm.models.tiny_families import tiny_config as family_config
from productvlm.models.tiny_families import tiny_tokenizer


def _model(family: str) -> SimpleNamespace:
    if family == "phi3v":
        return SimpleNamespace(config=tiny_config())
    tok = tiny_tokenizer(family, ["Product: Lola Bag, Category: BAGS"], 300)
    return SimpleNamespace(config=family_config(family, tok, hidden_size=32, layers=1,
                                                vision_hidden=32, vision_layers=1))


@pytest.mark.parametrize("family, kind", [("phi3v", "phi3"), ("qwen2_5_vl", "qwen2_5_vl"),
                                          ("qwen3_vl", "qwen3_vl"), ("smolvlm2", "smolvlm")])
def test_each_family_names_its_liger_model_type(family, kind) -> None:
    assert liger_type(_model(family)) == kind


def test_where_liger_cannot_run_is_a_one_line_error() -> None:
    with pytest.raises(ProductVLMError, match="no Liger kernels for Phi-4-multimodal"):
        liger_type(_model("phi4mm"))
    with pytest.raises(ProductVLMError, match="no Liger kernels for SmolVLM"):
        liger_type(_model("smolvlm"))  # Idefics3: Liger patches SmolVLM2's type only
    with pytest.raises(ProductVLMError, match="run on a CUDA GPU"):
        apply_liger(_model("phi3v"), torch.device("cpu"))
