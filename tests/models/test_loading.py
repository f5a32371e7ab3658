"""load_model / load_processor on a tiny model folder: Auto classes without remote code,
LoRA (decoder, vision), adapters on a base, freezing, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

from productvlm.errors import ProductVLMError
from productvlm.models.loading import LoraSpec, load_model
from productvlm.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from productvlm.models.phi3v.tiny import save_tiny_model
from productvlm.models.processors import load_processor
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tok = train_tiny_tokenizer(["Check Cotton Trench Coat", "Medium Lola Bag", "COATS"], 300)
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer=tok, num_crops=2)


def batch(processor: Phi3VProcessor):
    from PIL import Image

    images = [[Image.new("RGB", (200, 120), "red")], [Image.new("RGB", (90, 260), "blue")]]
    return processor(text=[PROMPT, PROMPT], images=images, return_tensors="pt")


def test_auto_classes_load_without_running_remote_code(folder, tmp_path) -> None:
    # a Hub-style folder: auto_map pointing at a file that fails loudly if ever executed
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                          "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in ("configuration_phi3_v.py", "modeling_phi3_v.py"):
        (tmp_path / name).write_text("raise RuntimeError('remote code was executed')\n")
    assert type(AutoConfig.from_pretrained(tmp_path, trust_remote_code=False)).__name__ == (
        "Phi3VConfig")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False)
    assert isinstance(model, Phi3VForCausalLM)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), Phi3VProcessor)


def test_load_model_and_processor_from_a_folder(folder) -> None:
    model = load_model(folder, dtype="fp32")
    processor = load_processor(folder, num_crops=1)
    assert isinstance(model, Phi3VForCausalLM) and model.dtype == torch.float32
    assert processor.num_crops == 1 and load_processor(folder).num_crops == 2
    inputs = batch(processor)
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_lora_trains_adapters_only_and_vision_when_asked(folder) -> None:
    model = load_model(folder, dtype="fp32", lora=LoraSpec(r=4, alpha=8),
                       gradient_checkpointing=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert isinstance(model, PeftModel) and trainable
    assert all("lora_" in n for n in trainable)
    assert not any("vision_embed_tokens" in n for n in trainable)
    assert any("qkv_proj" in n for n in trainable) and any("gate_up_proj" in n for n in trainable)

    vision = load_model(folder, dtype="fp32", lora=LoraSpec(r=4, alpha=8, vision=True))
    names = [n for n, p in vision.named_parameters() if p.requires_grad]
    assert any("img_projection" in n for n in names)
    assert any("vision_model.encoder.layers.0.self_attn.q_proj" in n for n in names)
    last = vision.config.vision_config.num_hidden_layers - 1  # never runs: no adapter
    assert not any(f"vision_model.encoder.layers.{last}." in n for n in names)

    inputs = batch(load_processor(folder))
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] < 0, -100)
    model.train()
    model(**inputs, labels=labels).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_adapter_folder_loads_on_its_base_and_merges(folder, tmp_path) -> None:
    peft_model = load_model(folder, dtype="fp32", lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # a non-trivial adapter
    peft_model.save_pretrained(tmp_path / "adapter")
    adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == folder
    inputs = batch(load_processor(tmp_path / "adapter"))  # falls back to the base's tokenizer
    merged = load_model(tmp_path / "adapter", dtype="fp32")
    assert isinstance(merged, Phi3VForCausalLM)
    with torch.no_grad():
        expected = peft_model.eval()(**inputs).logits
        base = load_model(folder, dtype="fp32")(**inputs).logits
        got = merged(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)


def test_freeze_vision_for_full_fine_tuning(folder) -> None:
    model = load_model(folder, dtype="fp32", freeze_vision=True)
    for name, param in model.named_parameters():
        assert param.requires_grad == (".img_processor." not in name), name


def test_train_config_drives_the_options(folder) -> None:
    from productvlm.training.config import TrainConfig

    full = load_model(folder, cfg=TrainConfig(model=str(folder), mode="full", precision="bf16"))
    assert isinstance(full, Phi3VForCausalLM) and full.dtype == torch.float32
    lora = load_model(folder, cfg=TrainConfig(model=str(folder), lora_r=4, lora_alpha=8))
    assert isinstance(lora, PeftModel)


def test_bad_sources_are_clear_errors(folder, tmp_path) -> None:
    with pytest.raises(ProductVLMError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ProductVLMError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ProductVLMError,
                       match="model_type .llama. is not a family productvlm fine-tunes"):
        load_model(tmp_path)
    with pytest.raises(ProductVLMError, match="not Phi-3 / Phi-3.5-vision decoder layers"):
        load_model(folder, lora=LoraSpec(targets=("q_proj",)))
    bare = tmp_path / "weights-only"
    bare.mkdir()
    (bare / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(ProductVLMError, match="no tokenizer.json"):
        load_processor(bare)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_qlora_without_cuda_is_a_clear_error(folder) -> None:
    with pytest.raises(ProductVLMError, match="CUDA"):
        load_model(folder, load_in_4bit=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_mode_qlora_says_in_one_line_what_it_needs(folder, monkeypatch) -> None:
    import sys

    from productvlm.training.config import TrainConfig

    cfg = TrainConfig(model=str(folder), mode="qlora")
    with pytest.raises(ProductVLMError) as err:
        load_model(folder, cfg=cfg)
    assert str(err.value) == ("QLoRA (load_in_4bit / mode qlora) needs a CUDA GPU; "
                              "use mode lora")
    # a CUDA machine without bitsandbytes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ProductVLMError) as err:
        load_model(folder, cfg=cfg)
    assert str(err.value) == "QLoRA needs bitsandbytes: pip install 'productvlm[gpu]'"


# ---------------------------------------------------------------- Hub kernels
@pytest.fixture
def kernel_requests(monkeypatch) -> list[bool]:
    """What each model load asks of transformers' Hub kernels (``set_use_kernels``'s flag).

    An opt-in is recorded, never run: running it would fetch kernels from the Hub."""
    from transformers import PreTrainedModel

    asked: list[bool] = []
    real = PreTrainedModel.set_use_kernels

    def record(self, use_kernels, *args, **kwargs):
        asked.append(bool(use_kernels))
        if not use_kernels:
            return real(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", record)
    return asked


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory) -> Path:
    from productvlm.models.tiny_families import save_tiny_family

    return save_tiny_family("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "model",
                            ["Check Cotton Trench Coat, COATS, 1,990.00"], vocab_size=300,
                            hidden_size=32, layers=1, vision_hidden=16, vision_layers=1)


@pytest.mark.parametrize("which", ["phi3v", "qwen"])
def test_loads_ask_for_no_hub_kernels_unless_the_config_says_so(
        which, folder, qwen_folder, kernel_requests) -> None:
    from productvlm.inference import Predictor
    from productvlm.training.config import TrainConfig

    source = folder if which == "phi3v" else qwen_folder
    # transformers 5.25 turns them on when from_pretrained is not told (use_kernels=None)
    trained = load_model(source, cfg=TrainConfig(model=str(source), lora_r=4, lora_alpha=8))
    answering = Predictor.load(source, device="cpu", max_new_tokens=4).model
    assert True not in kernel_requests
    assert not trained.base_model.model.use_kernels and not answering.use_kernels
    load_model(source, cfg=TrainConfig(model=str(source), hub_kernels=True))
    Predictor.load(source, device="cpu", hub_kernels=True)
    assert kernel_requests[-2:] == [True, True]


def test_every_stage_that_loads_a_model_has_hub_kernels_off() -> None:
    from productvlm.audit.run import AuditConfig
    from productvlm.config import HUB_KERNELS_HELP
    from productvlm.evaluation.evaluate import EvalConfig
    from productvlm.predict import PredictConfig
    from productvlm.serving.config import ServeConfig
    from productvlm.training.config import TrainConfig

    for cls in (AuditConfig, EvalConfig, PredictConfig, ServeConfig, TrainConfig):
        field = cls.model_fields["hub_kernels"]
        assert field.default is False and field.description == HUB_KERNELS_HELP, cls.__name__
