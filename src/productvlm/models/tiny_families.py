"""Tiny random Qwen2.5-VL, Qwen3-VL, SmolVLM (Idefics3), SmolVLM2 and Phi-4-multimodal
models, for tests and the demo (Phi-3-vision's: :mod:`productvlm.models.phi3v.tiny`).

Each is transformers' own class on a small config, with a tokenizer trained on the catalog's
text that has the family's special tokens and a chat template written from the public model
cards, and the family's own processor: the family's object builds them
(:meth:`~productvlm.models.family.ModelFamily.tiny_config` and the others; the names it
takes are its ``tiny_variants``). A folder it writes loads with
``AutoModelForImageTextToText`` (Phi-4: ``AutoModelForCausalLM``) and ``AutoProcessor`` like
a Hub checkpoint (given torchvision, which the processors' video half and Phi-4's image
processor need; productvlm loads them without it, see
:func:`productvlm.models.image_only.image_only_processor` and
:func:`productvlm.models.phi4mm.images.processor_class`).

>>> folder = save_tiny_family("qwen2_5_vl", "runs/tiny-qwen", ["Medium Lola Bag"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from productvlm.models.families import REGISTRY, ModelFamily, family_of
from productvlm.models.family import TinySizes
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

#: every name save_tiny_family takes, and its family
VARIANTS: dict[str, ModelFamily] = {v: f for f in REGISTRY for v in f.tiny_variants}


def _family(variant: str) -> ModelFamily:
    if variant not in VARIANTS:
        raise ValueError(f"no tiny {variant} model: use {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def tiny_tokenizer(family: str, texts: Iterable[str], vocab_size: int = 1024) -> Any:
    """A small tokenizer of ``family`` (a variant: ``qwen2_5_vl``, ``smolvlm2``, ...) trained
    on ``texts``."""
    return train_tiny_tokenizer(texts, vocab_size, _family(family).tiny_spec(family))


def tiny_config(family: str, tokenizer: Any, *, hidden_size: int = 128, layers: int = 4,
                vision_hidden: int = 64, vision_layers: int = 4, image_size: int = 112,
                rope_theta: float = 10000.0) -> Any:
    """A small config of ``family`` whose special-token ids are ``tokenizer``'s.

    ``rope_theta``: a small one makes positions matter within a short answer (tests that
    check positions use it)."""
    fam = _family(family)
    sizes = TinySizes(hidden_size=hidden_size, layers=layers, vision_hidden=vision_hidden,
                      vision_layers=vision_layers, image_size=image_size,
                      rope_theta=rope_theta)
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2, "num_hidden_layers": layers,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    return fam.tiny_config(family, tokenizer, text, sizes)


def tiny_processor(family: str, tokenizer: Any, config: Any, crops: int = 1) -> Any:
    """The family's processor for ``config``'s image sizes; ``crops``: Phi-4-multimodal's
    most crops a photo (``dynamic_hd``; 1, as the demo's Phi-3: the whole and one crop)."""
    return _family(family).tiny_processor(family, tokenizer, config, crops)


def tiny_model(config: Any, seed: int = 0) -> Any:
    """A randomly initialised model of ``config``'s family (transformers' own class)."""
    import transformers

    torch.manual_seed(seed)
    fam = family_of(config)
    model = getattr(transformers, fam.auto_class).from_config(config).eval()
    fam.init_tiny(model)
    return model


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


__all__ = ["VARIANTS", "save_tiny_family", "tiny_config", "tiny_model", "tiny_processor",
           "tiny_tokenizer"]
