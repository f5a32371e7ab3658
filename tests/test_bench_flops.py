"""bench/flops.py's FLOP formula (the MFU of bench/gpu_check.sh) against torch's own count of
a tiny LoRA step: every matmul of the forward and backward, as run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from productvlm.models.loading import LoraSpec, load_model
from productvlm.models.phi3v.tiny import save_tiny_model, tiny_config
from productvlm.models.processors import load_processor
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer
from productvlm.training.collate import VLMCollator

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _flops_module():
    spec = importlib.util.spec_from_file_location("bench_flops", BENCH / "flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("num_crops", [1, 4])
def test_formula_counts_what_torch_counts(tmp_path: Path, num_crops: int) -> None:
    tok = train_tiny_tokenizer(["Product: Lola Bag, Category: BAGS, Full Price: 1,290.00"] * 5,
                               300)
    cfg = tiny_config(len(tok), num_hidden_layers=3, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base = save_tiny_model(tmp_path / "m", config=cfg, tokenizer=tok, num_crops=num_crops)
    model = load_model(base, dtype="fp32", attn_implementation="eager",
                       lora=LoraSpec(r=8, alpha=16, dropout=0.0))
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    collate = VLMCollator(load_processor(base, num_crops=num_crops), max_length=1024)
    rows = [{"title": "Lola Bag", "category": "BAGS", "price": 1290.0,
             "image": Image.new("RGB", size, "tan")} for size in ((300, 200), (120, 260))]
    batch = collate(rows)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    counted = counter.get_total_flops()
    formula = _flops_module().lora_step_flops(model.config, batch, lora, count_padding=True)
    assert formula == pytest.approx(counted, rel=0.03), (formula, counted)
    useful = _flops_module().lora_step_flops(model.config, batch, lora)
    assert useful <= formula  # padding is not model work
