"""`productvlm train` -> predict / evaluate / serve for Qwen2.5-VL, SmolVLM and Phi-4-multimodal,
as for Phi-3.

The same TrainConfig, Trainer, W&B, resume, merged/ and calibration as test_trainer.py's
Phi-3-vision runs; only the model folder differs (a tiny model of transformers' own class).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from productvlm.inference import Predictor
from productvlm.models.families import FAMILIES, vision_param
from productvlm.models.loading import load_model
from productvlm.models.processors import load_processor
from productvlm.models.tiny_families import save_tiny_family
from productvlm.training.config import TrainConfig
from productvlm.training.trainer import train

from .conftest import COLOURS

EXE = Path(sys.executable).with_name("productvlm")


@pytest.fixture(scope="module", params=["qwen2_5_vl", "smolvlm", "phi4mm"])
def family_model(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    texts = [f"Product: {c.title()} Item, Category: {c}, Full Price: {p}00.00"
             for c in COLOURS for p in (1, 2, 3)] * 10
    folder = save_tiny_family(request.param, tmp_path_factory.mktemp(request.param) / "m",
                              texts, vocab_size=300, hidden_size=64, layers=2,
                              vision_hidden=32, vision_layers=2)
    return request.param, folder


def _cfg(base: Path, data: Path, out: Path, **kw) -> TrainConfig:
    values = dict(model=str(base), data=data, out=out, mode="lora", lora_r=4, lora_alpha=8,
                  max_length=256, batch_size=4, learning_rate=1e-3, lr_scheduler="constant",
                  warmup_ratio=0.0, max_steps=6, logging_steps=1, eval_steps=3, save_steps=3,
                  eval_samples=4, report_to="none", gradient_checkpointing=True,
                  freeze_vision=True, seed=0)
    values.update(kw)
    return TrainConfig(**values)


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


def test_lora_run_merges_predicts_and_serves(family_model, prepared, tmp_path) -> None:
    name, base = family_model
    out = tmp_path / "run"
    assert train(_cfg(base, prepared, out)).global_step == 6
    for f in ("config.yaml", "labels.json", "adapter/adapter_config.json", "merged/config.json",
              "merged/model.safetensors", "processor/tokenizer.json",
              "processor/processor_config.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "merged/config.json").read_text())["model_type"] in \
        FAMILIES[name].model_types
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_gen_parse_rate" in e for e in log)
    # the merged model is the adapter folded in (same answers as base + adapter)
    photos = [Image.new("RGB", (150, 170), "tan"), Image.new("RGB", (190, 120), "navy")]
    merged = Predictor.load(out, max_new_tokens=32)
    adapted = Predictor(load_model(base, adapter=out / "adapter"),
                        load_processor(out / "processor"), categories=merged.categories,
                        max_new_tokens=32, title_alphabet=merged.title_alphabet,
                        title_max_chars=merged.title_max_chars)
    got = merged.predict(photos)
    assert [p.raw for p in got] == [p.raw for p in adapted.predict(photos)]
    assert all(p.ok and p.category in COLOURS for p in got)
    # evaluate and predict through the CLI, as a user runs them
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([str(EXE), "evaluate", "--model", str(out), "--data", str(prepared),
                           "--out", str(tmp_path / "eval"), "--no-calibrate"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["parse_rate"] == 1.0 and metrics["metrics"]["n"] == 6
    photo = tmp_path / "bag.png"
    photos[0].save(photo)
    proc = subprocess.run([str(EXE), "predict", "--model", str(out), "--json", str(photo)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["category"] in COLOURS
    # the HTTP API and its page on the same predictor
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from productvlm.serving.app import create_app
    from productvlm.serving.config import ServeConfig

    png = photo.read_bytes()
    with TestClient(create_app(merged, ServeConfig(model=str(out)))) as client:
        resp = client.post("/v1/predict", files=[("files", ("bag.png", png, "image/png"))])
        assert resp.status_code == 200, resp.text
        answer = resp.json()["results"][0]
        assert answer["ok"] and answer["category"] in COLOURS
        assert client.get("/").status_code == 200


def test_resume_continues_exactly(family_model, prepared, tmp_path) -> None:
    _, base = family_model
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(base, prepared, full, merge=False, eval_samples=0))
    train(_cfg(base, prepared, part, merge=False, eval_samples=0, max_steps=3))
    train(_cfg(base, prepared, part, merge=False, eval_samples=0, resume=True))
    a, b = _losses(full), _losses(part)
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step


def _weights(name: str, folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of a saved model, loaded by transformers' own class for the family."""
    import transformers

    return getattr(transformers, FAMILIES[name].auto_class).from_pretrained(folder).state_dict()


def _decoder(name: str, key: str) -> bool:
    fam = FAMILIES[name]
    return (key.startswith(f"{fam.text_model}.") and not vision_param(fam, key)
            and not any(key.startswith(f"{m}.") for m in fam.frozen))


def test_full_fine_tuning_with_a_trained_image_side_and_its_own_rate(family_model, prepared,
                                                                    tmp_path) -> None:
    name, base = family_model
    out = tmp_path / "run"
    train(_cfg(base, prepared, out, mode="full", freeze_vision=False, vision_lr=1e-2,
               max_steps=2, eval_steps=2, save_steps=2, eval_samples=0,
               gradient_checkpointing=False))
    before, after = _weights(name, base), _weights(name, out / "merged")
    fam = FAMILIES[name]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(vision_param(fam, k, tower=True) for k in moved)  # the encoder trained
    assert any(_decoder(name, k) for k in moved)
    assert not any(k.startswith(f"{m}.") for m in fam.frozen for k in moved)


def test_vision_warm_up_trains_the_image_side_first(family_model, prepared, tmp_path) -> None:
    name, base = family_model
    out = tmp_path / "run"
    train(_cfg(base, prepared, out, mode="full", freeze_vision=False, max_steps=1,
               eval_steps=1, save_steps=1, eval_samples=0, learning_rate=1e-9,
               gradient_checkpointing=False, vision_warmup_epochs=3, vision_warmup_lr=1e-2,
               hflip=0.5))
    stats = json.loads((out / "vision_warmup.json").read_text())
    assert stats["steps"] == 3 * 6 and 0.0 <= stats["validation_category_accuracy"] <= 1.0
    before, after = _weights(name, base), _weights(name, out / "merged")
    fam = FAMILIES[name]
    moved = {k for k in before if (after[k] - before[k]).abs().max() > 1e-6}
    # the warm-up moved the image side; the decoder barely moved (lr 1e-9, one step)
    assert any(vision_param(fam, k, tower=True) for k in moved)
    assert not any(_decoder(name, k) for k in moved)


def test_wandb_offline_run(family_model, prepared, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    wandb.teardown()
    _, base = family_model
    train(_cfg(base, prepared, tmp_path / "run", report_to="wandb", max_steps=3, merge=False))
    run_file = next(next(tmp_path.rglob("offline-run-*")).glob("*.wandb"))
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary",
                           "--json", str(run_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["train/global_step"] == 3 and "eval/gen_parse_rate" in summary
