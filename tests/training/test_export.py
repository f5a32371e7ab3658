"""`productvlm export --for vllm RUN`: what it writes for an adapter run and a merged run, and
its one-line errors. (That vLLM loads what it writes is tests/vllm's, in vLLM's environment.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from productvlm.errors import ProductVLMError
from productvlm.export import ADAPTER_NAME, export_for_vllm
from productvlm.models.tiny_families import save_tiny_family
from productvlm.prompts import render_prompt
from productvlm.training.config import TrainConfig
from productvlm.training.trainer import train

from .conftest import COLOURS

EXE = Path(sys.executable).with_name("productvlm")


@pytest.fixture(scope="module")
def qwen_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [f"Product: {c.title()} Item, Category: {c}, Full Price: {p}00.00"
             for c in COLOURS for p in (1, 2, 3)] * 10
    return save_tiny_family("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "m", texts,
                            vocab_size=300, hidden_size=64, layers=2, vision_hidden=32,
                            vision_layers=2)


def _run(base: Path, prepared: Path, out: Path, **kw) -> Path:
    values = dict(model=str(base), data=prepared, out=out, mode="lora", lora_r=4, lora_alpha=8,
                  max_length=256, batch_size=4, learning_rate=1e-3, max_steps=2,
                  eval_steps=100, save_steps=100, eval_samples=0, report_to="none", seed=0)
    values.update(kw)
    train(TrainConfig(**values))
    return out


def test_a_decoder_lora_run_exports_its_adapter(qwen_base, prepared, tmp_path) -> None:
    run = _run(qwen_base, prepared, tmp_path / "run")
    proc = subprocess.run([str(EXE), "export", str(run), "--for", "vllm"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = run / "vllm"
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert not (out / "model").exists()  # the base is served as it is, with the adapter on it
    plan = json.loads((out / "vllm.json").read_text())
    assert plan["serve"].startswith(f"vllm serve {qwen_base} ")
    assert f"--lora-modules {ADAPTER_NAME}={out / 'adapter'}" in plan["serve"]
    assert "--enable-lora" in plan["serve"] and "--max-lora-rank 16" in plan["serve"]
    assert plan["model"] == ADAPTER_NAME and "serve it:" in proc.stdout
    from productvlm.models.processors import load_processor

    tok = load_processor(run / "processor").tokenizer
    assert plan["prompt"] == render_prompt(tok, "What is shown in this image?")
    assert plan["stop_token_ids"] == [tok.convert_tokens_to_ids("<|im_end|>")]
    rx = re.compile(plan["structured_outputs"]["regex"])
    assert rx.fullmatch("Product: Bags Item, Category: BAGS, Full Price: 100.00")
    assert not rx.fullmatch("Product: Bags Item, Category: BELTS, Full Price: 100.00")
    assert "num_crops" not in plan["serve"]  # Phi-3-vision's alone


def test_an_image_side_run_exports_merged_with_its_processor_whole(qwen_base, prepared,
                                                                   tmp_path) -> None:
    run = _run(qwen_base, prepared, tmp_path / "run", lora_vision=True)
    # a merged/ saved before complete_processor existed (or edited by hand) lacks the video
    # processor transformers 5.19 and vLLM load a Qwen folder with
    proc_cfg = run / "merged" / "processor_config.json"
    saved = json.loads(proc_cfg.read_text())
    assert "video_processor" in saved  # save_merged writes it now
    saved.pop("video_processor")
    proc_cfg.write_text(json.dumps(saved))
    out = export_for_vllm(run, tmp_path / "export")
    model = out / "model"
    assert (model / "model.safetensors").stat().st_ino == (
        run / "merged" / "model.safetensors").stat().st_ino  # a hard link, not a copy
    video = json.loads((model / "processor_config.json").read_text())["video_processor"]
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert video["patch_size"] == saved["image_processor"]["patch_size"]
    assert "video_processor" not in json.loads(proc_cfg.read_text())  # merged/ untouched
    plan = json.loads((out / "vllm.json").read_text())
    assert plan["serve"].startswith(f"vllm serve {model} ") and "lora" not in plan["serve"]
    assert "image-side LoRA" in plan["why"] and "video_processor" in plan["why"]


def test_errors_are_one_line(qwen_base, prepared, tmp_path) -> None:
    with pytest.raises(ProductVLMError, match="not a run directory"):
        export_for_vllm(tmp_path)
    run = _run(qwen_base, prepared, tmp_path / "run", lora_vision=True, merge=False)
    with pytest.raises(ProductVLMError, match="needs the merged model"):
        export_for_vllm(run)
    proc = subprocess.run([str(EXE), "export", str(run), "--for", "onnx"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "vllm only" in proc.stderr
    assert "Traceback" not in proc.stderr
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["lora_vision"] is True
