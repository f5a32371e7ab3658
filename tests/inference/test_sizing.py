"""``batch_size: auto`` (inference/sizing.py): the probe photo's prompt bounds every photo's
in each family, the batch is what the free GPU memory holds at the estimate, the CPU keeps
the default, and the commands take a number or ``auto`` (anything else: a one-line error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from productvlm.inference import BATCH_SIZE, Predictor
from productvlm.inference.sizing import (
    HEADROOM,
    MAX_AUTO,
    answer_batch_size,
    bytes_per_photo,
    plan_rows,
    prompt_tokens,
)
from productvlm.models.processors import ImageOptions, load_processor
from productvlm.models.tiny_families import save_tiny_family
from productvlm.prompts import QUESTION, render_prompt
from productvlm.rundir import resolve_model

EXE = Path(sys.executable).with_name("productvlm")
TEXTS = ["Product: Medium Lola Bag, Category: BAGS, Full Price: 1,290.00"] * 4


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm", "phi4mm"])
def test_the_probe_prompt_is_the_longest_a_photo_makes(family: str, tmp_path: Path) -> None:
    folder = save_tiny_family(family, tmp_path / family, TEXTS, vocab_size=300, hidden_size=64,
                              layers=1, vision_hidden=32, vision_layers=1, crops=2)
    # SmolVLM's tiles only with splitting on; Qwen's patches capped by max_pixels
    options = {"smolvlm": ImageOptions(image_splitting=True),
               "qwen2_5_vl": ImageOptions(max_pixels=256 * 256)}.get(family)
    processor = load_processor(folder, options=options)
    text = render_prompt(processor.tokenizer, QUESTION)
    lengths = [int(processor(text=[text], images=[Image.new("RGB", size, "tan")],
                             return_tensors="pt")["input_ids"].shape[1])
               for size in [(64, 64), (300, 90), (90, 300), (1200, 800), (2000, 2000),
                            (3000, 400)]]
    probe = prompt_tokens(processor, QUESTION)
    assert probe >= max(lengths) and probe > min(lengths)


def test_the_phi3_probe_fills_the_crop_grid(calibrated_run: dict[str, Path]) -> None:
    processor = load_processor(resolve_model(calibrated_run["run"]).processor, num_crops=4)
    text = render_prompt(processor.tokenizer, QUESTION)
    longest = max(int(processor(text=[text], images=[Image.new("RGB", s, "tan")],
                                return_tensors="pt")["input_ids"].shape[1])
                  for s in [(90, 90), (400, 100), (100, 400), (900, 700)])
    assert prompt_tokens(processor, QUESTION) >= longest


def _gpu_model(layers: int = 4, hidden: int = 64) -> SimpleNamespace:
    text = SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    return SimpleNamespace(device=torch.device("cuda"),
                           config=SimpleNamespace(get_text_config=lambda: text),
                           parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)]))


def test_auto_on_a_gpu_fills_its_free_memory(calibrated_run, monkeypatch) -> None:
    processor = load_processor(resolve_model(calibrated_run["run"]).processor)
    model = _gpu_model()
    tokens = prompt_tokens(processor, QUESTION)
    each = bytes_per_photo(model.config.get_text_config(), tokens, 64, 2, logits=True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    for free, expected in [(10 * each, int(HEADROOM * 10)), (each // 3, 1),
                           (10_000 * each, MAX_AUTO)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free: (f, 2 * f))
        size, why = answer_batch_size(model, processor, max_new_tokens=64, question=QUESTION)
        assert size == expected, (free, why)
        assert why.startswith(f"batch size auto: {size} photos a batch (Test GPU")
        assert f"{tokens:,} prompt" in why
    # KV heads count: a grouped-KV model's photo costs less than a full-KV one's
    full = SimpleNamespace(**{**vars(model.config.get_text_config()), "num_key_value_heads": 4})
    assert bytes_per_photo(full, tokens, 64, 2, True) > each


def test_auto_on_the_cpu_keeps_the_default(calibrated_run, capsys) -> None:
    size, why = answer_batch_size(SimpleNamespace(device=torch.device("cpu")), None,
                                  max_new_tokens=64, question=QUESTION)
    assert (size, why) == (BATCH_SIZE, f"batch size auto: {BATCH_SIZE} photos a batch (the CPU)")
    predictor = Predictor.load(calibrated_run["run"], batch_size="auto", max_new_tokens=48)
    assert predictor.batch_size == BATCH_SIZE
    assert "batch size auto: 16 photos a batch (the CPU)" in capsys.readouterr().err
    assert plan_rows("auto") == MAX_AUTO and plan_rows(6) == 6


def test_commands_take_a_number_or_auto(calibrated_run, tmp_path) -> None:
    photo = tmp_path / "bag.png"
    Image.new("RGB", (80, 120), "tan").save(photo)
    base = [str(EXE), "predict", "--model", str(calibrated_run["run"]), str(photo), "--json"]
    for size in ("auto", "2"):
        done = subprocess.run(base + ["--batch-size", size], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    bad = subprocess.run(base + ["--batch-size", "many"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "batch_size" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
