"""Load a model of any family (+ LoRA / QLoRA) and its processor from a Hub id or a folder.

The one owner of three decisions every command shares: which device and dtype a model runs
in (:func:`pick_device`, :func:`pick_dtype`: CUDA with bf16 where it exists, else fp32 on the
CPU, unless a precision is asked for), and how an adapter meets its base (loaded on it and
merged, unless training goes on).

A folder is either a full model (config.json whose model_type is one of a family's in
:mod:`productvlm.models.families`: ``phi3_v``, ``qwen2_5_vl``, ``qwen3_vl``, ``idefics3``,
``smolvlm``, ...) or a PEFT adapter (adapter_config.json naming its base model); both load
the same way, each with its family's classes (``ModelFamily.load``: Phi-3-vision our own, the
others transformers' own):

>>> model = load_model("microsoft/Phi-3-vision-128k-instruct", dtype="bf16",
...     lora=LoraSpec(r=64, alpha=128), gradient_checkpointing=True)  # doctest: +SKIP
>>> merged = load_model("runs/train/adapter")  # base + adapter, merged  # doctest: +SKIP

Nothing here runs remote code: our classes are registered for ``phi3_v`` on import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from productvlm.errors import ProductVLMError
from productvlm.models.families import FAMILIES, ModelFamily, family_for, family_of
from productvlm.rundir import is_hub_id

DECODER_TARGETS = FAMILIES["phi3v"].decoder_targets
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
           "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device where there is one, else the CPU.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device)
    except RuntimeError:
        raise ProductVLMError(f"--device {device!r}: use auto, cpu, cuda or cuda:N") from None


def pick_dtype(precision: Any = "auto", device: torch.device | str | None = None) -> torch.dtype:
    """The compute dtype: ``auto`` is bf16 on a CUDA device that has it, else fp32.

    >>> pick_dtype("auto", "cpu"), pick_dtype("bf16")
    (torch.float32, torch.bfloat16)
    """
    if isinstance(precision, torch.dtype):
        return precision
    if precision in (None, "auto"):
        on_cuda = torch.device(device).type == "cuda" if device is not None else True
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_cuda and cuda_bf16 else torch.float32
    if precision not in _DTYPES:
        raise ProductVLMError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
    return _DTYPES[precision]


def mixed_precision(precision: str) -> tuple[bool, bool]:
    """(bf16, fp16) for the Trainer's mixed precision, from the same rule as :func:`pick_dtype`."""
    dtype = pick_dtype(precision)
    return dtype == torch.bfloat16, dtype == torch.float16


@dataclass(frozen=True)
class LoraSpec:
    """LoRA on the decoder's linear layers, and optionally on the vision side.

    ``vision`` adds the CLIP layers that run (attention and MLP) and the image projection.
    """

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    targets: tuple[str, ...] | None = None  # None: the family's decoder_targets
    vision: bool = False


def lora_target_regex(config: Any, spec: LoraSpec) -> str:
    """The module names LoRA wraps, as one regex (PEFT matches it against full names).

    >>> lora_target_regex(tiny_config(), LoraSpec(targets=("qkv_proj",)))  # doctest: +SKIP
    'model\\\\.layers\\\\.\\\\d+\\\\.(self_attn|mlp)\\\\.(qkv_proj)'
    """
    fam = family_of(config)
    targets = spec.targets or fam.decoder_targets
    unknown = set(targets) - set(fam.decoder_targets)
    if unknown:
        raise ProductVLMError(
            f"LoRA targets {sorted(unknown)} are not {fam.title} decoder layers; "
            f"choose from {', '.join(fam.decoder_targets)}"
        )
    parts = [rf"{fam.decoder}\.({'|'.join(targets)})"]
    if spec.vision:
        parts.extend(fam.vision_lora_parts(config))
    return "|".join(f"(?:{p})" for p in parts)


def check_source(name_or_path: str | os.PathLike) -> tuple[str, dict | None]:
    """(what to load, adapter_config or None), raising ProductVLMError for a bad source."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        adapter = path / "adapter_config.json"
        if adapter.is_file():
            return str(path), json.loads(adapter.read_text())
        config = path / "config.json"
        if not config.is_file():
            raise ProductVLMError(
                f"{path}: no config.json or adapter_config.json; point at a model folder "
                "(Phi-3-vision, Qwen2.5-VL/Qwen3-VL, SmolVLM, Phi-4-multimodal), a LoRA adapter "
                "folder or a Hub id"
            )
        model_type = json.loads(config.read_text()).get("model_type")
        try:
            family_for(str(model_type))
        except ProductVLMError as e:
            raise ProductVLMError(f"{config}: {e}") from None
        return str(path), None
    if path.exists() or not is_hub_id(name):
        raise ProductVLMError(f"model folder {name} does not exist (and is not a Hub id)")
    return name, None


def hub_config(name: str) -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ProductVLMError(
            f"{name}: no such folder, and loading it as a Hub id failed: {err}"
        ) from err
    try:
        family_for(config.model_type)
    except ProductVLMError as e:
        raise ProductVLMError(f"{name}: {e}") from None
    return config


def model_family(name_or_path: str | os.PathLike) -> ModelFamily:
    """The family of a model folder, an adapter folder (its base's) or a Hub id.

    >>> model_family("HuggingFaceTB/SmolVLM-256M-Instruct").name  # doctest: +SKIP
    'smolvlm'
    """
    source, adapter = check_source(name_or_path)
    if adapter is not None:
        source, _ = check_source(adapter.get("base_model_name_or_path") or "")
    config = Path(source) / "config.json"
    if config.is_file():
        return family_for(str(json.loads(config.read_text()).get("model_type")))
    return family_for(hub_config(source).model_type)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = "auto",
    adapter: str | os.PathLike | None = None,
    attn_implementation: str = "sdpa",
    lora: LoraSpec | None = None,
    freeze_vision: bool = False,
    gradient_checkpointing: bool = False,
    load_in_4bit: bool = False,
    device_map: Any = None,
    hub_kernels: bool = False,
    cfg: Any = None,
) -> torch.nn.Module:
    """A model of any family from a Hub id, a model folder or an adapter folder, ready to
    train: Phi3VForCausalLM (ours) or transformers' own class for the others.

    ``lora`` wraps it with PEFT (trainable adapters only); ``load_in_4bit`` is QLoRA (CUDA and
    bitsandbytes). ``hub_kernels`` is transformers' ``use_kernels``, always passed (see
    ``config.HubKernels``): off, nothing is fetched from the Hub at load or at the first
    training step. ``freeze_vision`` freezes the image side for full fine-tuning. An adapter
    (an adapter folder as ``name_or_path`` on the base it names, or ``adapter`` on
    ``name_or_path``) is merged, unless ``lora`` asks to train it further. ``cfg`` (a
    TrainConfig: mode, precision, lora_*, freeze_vision, gradient_checkpointing,
    attn_implementation, hub_kernels) sets all of these.
    """
    if cfg is not None:
        mode = getattr(cfg, "mode", "lora")
        load_in_4bit = mode == "qlora"
        if mode in ("lora", "qlora"):
            lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            vision=cfg.lora_vision)
        freeze_vision = cfg.freeze_vision
        # "auto" is decided once the step's size is known (training/memory.py); the Trainer
        # then turns it on
        gradient_checkpointing = cfg.gradient_checkpointing is True
        attn_implementation = cfg.attn_implementation
        hub_kernels = cfg.hub_kernels
        # full fine-tuning keeps fp32 master weights (mixed precision does the bf16 compute)
        bf16 = pick_dtype(cfg.precision) == torch.bfloat16
        dtype = torch.bfloat16 if bf16 and mode != "full" else torch.float32

    source, adapter_cfg = check_source(name_or_path)
    base = source
    if adapter is not None:
        if adapter_cfg is not None:
            raise ProductVLMError(f"{source}: an adapter folder cannot take another adapter")
        adapter_dir, adapter_cfg = check_source(adapter)
        if adapter_cfg is None:
            raise ProductVLMError(f"{adapter}: no adapter_config.json; not an adapter folder")
        source = adapter_dir
    elif adapter_cfg is not None:
        base = adapter_cfg.get("base_model_name_or_path")
        if not base:
            raise ProductVLMError(f"{source}/adapter_config.json names no base_model_name_or_path")
        base, nested = check_source(base)
        if nested is not None:
            raise ProductVLMError(f"{source}: its base model {base} is itself an adapter")
    fam = model_family(base)

    kwargs: dict[str, Any] = {"dtype": pick_dtype(dtype),
                              "attn_implementation": attn_implementation,
                              "use_kernels": bool(hub_kernels)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        kwargs.update(_quantization(kwargs["dtype"], fam))
    try:
        model = fam.load(base, **kwargs)
    except ImportError as err:  # e.g. flash_attention_2 requested but not installed
        raise ProductVLMError(f"cannot load {base} with {attn_implementation}: {err}") from err
    except ValueError as err:  # an attention kernel the architecture does not take
        if attn_implementation not in str(err):
            raise
        raise ProductVLMError(f"cannot load {base} with {attn_implementation}: "
                              f"{str(err).split('. ')[0]}; use sdpa") from None
    except OSError as err:
        raise ProductVLMError(f"cannot load model weights from {base}: {err}") from err

    for module in model.modules():
        if type(module).__name__ in fam.bidirectional:
            module.is_causal = False  # an image encoder sees the whole crop
    for sub in fam.merged_adapters:
        model = _merge_shipped_adapter(model, base, sub)
    if adapter_cfg is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source, is_trainable=lora is not None)
        if lora is None:
            return merge_adapter(model).eval()
    for name, param in model.named_parameters():
        if (freeze_vision and fam.vision_param(name, tower=True)) or any(
                name.startswith(f"{m}.") for m in fam.frozen):
            param.requires_grad_(False)
    if gradient_checkpointing:
        model.config.use_cache = False
        if load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            from productvlm.models.compat import enable_checkpointing

            enable_checkpointing(model)
    if lora is not None and adapter_cfg is None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora_target_regex(model.config, lora),
                            task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    return model


def _merge_shipped_adapter(model: Any, base: str, sub: str) -> torch.nn.Module:
    """``model`` with the LoRA adapter its checkpoint ships in folder ``sub`` merged in, if
    the checkpoint has one (Phi-4-multimodal's ``vision-lora``: the weights its answers about
    images are made with); the merged weights are what productvlm trains and saves."""
    if Path(base).is_dir():
        if not (Path(base) / sub / "adapter_config.json").is_file():
            return model
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        try:
            hf_hub_download(base, f"{sub}/adapter_config.json")
        except RemoteEntryNotFoundError:
            return model  # the checkpoint has none
        except LocalEntryNotFoundError as err:  # offline, and not in the cache
            raise ProductVLMError(
                f"{base}: cannot tell whether it ships {sub}/ (offline, not in the Hub cache); "
                f"download the whole checkpoint (hf download {base}) or point at "
                "its folder") from err
    from peft import PeftModel

    try:
        shipped = PeftModel.from_pretrained(model, base, subfolder=sub)
    except (OSError, ValueError, KeyError) as err:
        raise ProductVLMError(f"{base}/{sub}: cannot load the adapter the checkpoint ships: "
                              f"{err}") from err
    return merge_adapter(shipped)


def merge_adapter(model: Any) -> torch.nn.Module:
    """The base model with the adapter's weights folded in (``merge_and_unload``): what
    inference runs (at the base model's speed) and what a run saves as merged/.

    >>> merged = merge_adapter(peft_model)  # doctest: +SKIP
    """
    return model.merge_and_unload()


def _quantization(compute_dtype: torch.dtype, fam: ModelFamily) -> dict[str, Any]:
    """from_pretrained kwargs for QLoRA (4-bit NF4), or a clear error where it cannot run."""
    if not torch.cuda.is_available():
        raise ProductVLMError("QLoRA (load_in_4bit / mode qlora) needs a CUDA GPU; use mode lora")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ProductVLMError(
            "QLoRA needs bitsandbytes: pip install 'productvlm[gpu]'"
        ) from err
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype if compute_dtype != torch.float32 else torch.bfloat16,
        # the vision tower and the output layer stay in 16 bits, as is usual for VLM QLoRA
        llm_int8_skip_modules=[m.rsplit(".", 1)[-1] for m in fam.vision_modules] + ["lm_head"],
    )
    return {"quantization_config": quant, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


__all__ = ["DECODER_TARGETS", "PRECISIONS", "LoraSpec", "check_source",
           "hub_config", "load_model", "lora_target_regex", "merge_adapter", "mixed_precision",
           "model_family", "pick_device", "pick_dtype"]
