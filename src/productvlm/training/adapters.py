"""What gets trained: LoRA, QLoRA or every weight, with the CLIP tower frozen or not.

LoRA goes on the decoder's fused projections (``qkv_proj``, ``o_proj``, ``gate_up_proj``,
``down_proj``) and, with ``lora_vision``, on the CLIP tower and the image projection. The
target is a regex anchored on the decoder's module path, because the CLIP tower has its own
``out_proj``/``fc1`` names and a bare suffix list would silently adapt it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.training.config import TrainConfig

DECODER_TARGETS = (
    r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"
)
VISION_TARGETS = (
    r"model\.vision_embed_tokens\.(img_processor\.vision_model\.encoder\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))|img_projection\.[02])"
)


def _check_model_source(name: str) -> None:
    path = Path(name)
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_local and not (path / "config.json").is_file():
        raise ProductVLMError(f"{name}: no model here (config.json missing); give a model "
                              "folder or a Hub id such as microsoft/Phi-3-vision-128k-instruct")
    if (path / "config.json").is_file():
        import json

        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "phi3_v":
            raise ProductVLMError(f"{path / 'config.json'}: model_type is {model_type!r}, "
                                  "productvlm trains Phi-3-vision ('phi3_v') models")


def build_model(cfg: TrainConfig, dtype: Any) -> Any:
    """Load ``cfg.model`` and make exactly the requested weights trainable.

    >>> model = build_model(TrainConfig(mode="lora"), torch.bfloat16)  # doctest: +SKIP
    """
    import torch

    import productvlm.models.phi3v  # noqa: F401  (registers phi3_v)
    from productvlm.models.phi3v import Phi3VForCausalLM

    _check_model_source(cfg.model)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": cfg.attn_implementation}
    if cfg.mode == "qlora":
        kwargs["quantization_config"] = _four_bit_config(dtype)
    model = Phi3VForCausalLM.from_pretrained(cfg.model, **kwargs)
    model.config.use_cache = False  # the cache is useless in training and costs memory

    if cfg.freeze_vision:
        model.vision_tower.requires_grad_(False)
    if cfg.mode == "full":
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.mode == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = DECODER_TARGETS if not cfg.lora_vision else f"({DECODER_TARGETS})|({VISION_TARGETS})"
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, lora)
    if not cfg.freeze_vision and not cfg.lora_vision:
        # "train the tower" without LoRA on it means its own weights learn
        embed = model.base_model.model.model.vision_embed_tokens
        embed.requires_grad_(True)
        embed.freeze_unused()  # CLIP layers after the feature layer never run (DDP needs this)
    if dtype == torch.float32:
        return model
    for p in model.parameters():  # trainable weights in fp32 keep Adam's updates exact
        if p.requires_grad:
            p.data = p.data.float()
    return model


def _four_bit_config(dtype: Any) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise ProductVLMError("mode qlora needs a CUDA GPU (4-bit weights via bitsandbytes); "
                              "use --mode lora on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ProductVLMError(
            "mode qlora needs bitsandbytes: pip install 'productvlm[gpu]'"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # the vision tower and projection stay in 16 bits: small, and sensitive to rounding
        llm_int8_skip_modules=["vision_embed_tokens", "lm_head"],
    )
