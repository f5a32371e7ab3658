"""Tiny Phi-3-vision configs and random models for tests and the CPU demo.

They keep every structural choice of the real model (longrope "su" scaling, CLIP tower with
features from hidden state -2, 2x2 merge, separators, MLP projection, fused qkv / gate_up) and
shrink only sizes: 112-px crops of 14-px patches (a 4x4 merged grid: 16 tokens per crop), a
64-wide 4-layer CLIP, a 128-wide 4-layer decoder and, optionally, a small vocabulary. A model
is a few MB, so a CPU trains it in minutes.

>>> folder = save_tiny_model("runs/tiny-phi3v", vocab_size=1024)  # doctest: +SKIP
>>> model = Phi3VForCausalLM.from_pretrained(folder)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from .configuration import Phi3VConfig

TINY_VISION: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 112,
    "patch_size": 14,
    "projection_dim": 64,
}


def tiny_config(
    vocab_size: int = 1024,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int = 256,
    vision: dict[str, Any] | None = None,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int | None = None,
    **overrides: Any,
) -> Phi3VConfig:
    """A small Phi3VConfig on the real model's code paths.

    ``vision`` overrides :data:`TINY_VISION`; ``overrides`` go to the config as they are.

    >>> cfg = tiny_config()
    >>> cfg.crop_size, cfg.num_img_tokens, cfg.image_token_count(1, 2)
    (112, 16, 57)
    """
    vision_config = {**TINY_VISION, **(vision or {})}
    head_dim = hidden_size // num_attention_heads
    half = head_dim // 2
    # longrope factors: one per rotary frequency, as in the real file (short ~1, long growing)
    short = [round(1.0 + 0.05 * i, 4) for i in range(half)]
    long = [round(1.0 + (60.0 - 1.0) * (i / max(half - 1, 1)) ** 2, 4) for i in range(half)]
    grid = vision_config["image_size"] // vision_config["patch_size"]
    return Phi3VConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        sliding_window=131072,
        rope_scaling={"type": "su", "short_factor": short, "long_factor": long},
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        img_processor={
            "name": "clip_vision_model",
            "image_dim_out": vision_config["hidden_size"],
            "num_img_tokens": (grid // 2) ** 2,
        },
        vision_config=vision_config,
        architectures=["Phi3VForCausalLM"],
        **overrides,
    )


VisionInit = Literal["clip", "torch"]


def tiny_model(
    config: Phi3VConfig | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32,
    vision_init: VisionInit = "clip",
):
    """A randomly initialised Phi3VForCausalLM; separators random too, so their order shows.

    ``vision_init="torch"`` starts the image side from PyTorch's default initialisation
    instead of CLIP's scheme (position embeddings N(0, 1) instead of N(0, 0.02), wider
    attention weights, non-zero biases). For a tiny tower trained from scratch on a thousand
    photos it learns markedly faster: the demo's vision warm-up reached validation category
    accuracy 0.87 from it against 0.77 from CLIP's scheme (0.83 with only the position
    embeddings changed). The demo uses it.

    >>> tiny_model().num_parameters() < 2_000_000
    True
    """
    from .modeling import Phi3VForCausalLM

    config = config or tiny_config()
    torch.manual_seed(seed)
    model = Phi3VForCausalLM(config)
    emb = model.model.vision_embed_tokens
    if vision_init == "torch":
        for module in emb.modules():
            if module is not emb and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        torch.nn.init.normal_(emb.img_processor.vision_model.embeddings.class_embedding)
    with torch.no_grad():
        # the reference starts them at zero; random values make a wrong placement visible
        emb.glb_GN.normal_(std=0.5)
        emb.sub_GN.normal_(std=0.5)
    return model.to(dtype).eval()


def save_tiny_model(
    folder: str | Path,
    *,
    config: Phi3VConfig | None = None,
    vocab_size: int = 1024,
    tokenizer: Any = None,
    num_crops: int = 4,
    seed: int = 0,
    vision_init: VisionInit = "clip",
) -> Path:
    """Write a tiny random model folder in the Hub format (config.json, model.safetensors).

    With ``tokenizer`` it also writes the processor (tokenizer files and a
    preprocessor_config.json sized from the config), so the folder loads with
    ``load_model`` / ``load_processor`` like a Hub checkpoint. Its special-token ids become
    the config's bos/eos/pad.
    """
    folder = Path(folder)
    if config is None:
        ids: dict[str, Any] = {}
        if tokenizer is not None:
            vocab_size = len(tokenizer)
            ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        config = tiny_config(vocab_size, **ids)
    model = tiny_model(config, seed=seed, vision_init=vision_init)
    if tokenizer is not None:
        # as the Hub's generation_config.json: stop at <|endoftext|>, <|assistant|> or <|end|>
        stops = [tokenizer.convert_tokens_to_ids(t)
                 for t in ("<|endoftext|>", "<|assistant|>", "<|end|>")]
        stops = [i for i in stops if i is not None and i != tokenizer.unk_token_id]
        model.generation_config.eos_token_id = stops or config.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    if tokenizer is not None:
        from .image_processing import Phi3VImageProcessor
        from .processing import Phi3VProcessor

        images = Phi3VImageProcessor(num_crops=num_crops, crop_size=config.crop_size,
                                     num_img_tokens=config.num_img_tokens)
        Phi3VProcessor(images, tokenizer).save_pretrained(folder)
    return folder


__all__ = ["TINY_VISION", "save_tiny_model", "tiny_config", "tiny_model"]
