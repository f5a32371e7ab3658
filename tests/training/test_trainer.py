"""`productvlm train` end to end on a tiny model: outputs, W&B offline run, resume, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from peft import PeftModel
from PIL import Image

from productvlm.config import save_config
from productvlm.errors import ProductVLMError
from productvlm.models.phi3v.hub_layout import compare_layout, hub_tensor_shapes, read_layout
from productvlm.models.processors import load_processor
from productvlm.prompts import render_prompt
from productvlm.training.config import TrainConfig
from productvlm.training.trainer import train

EXE = Path(sys.executable).with_name("productvlm")


def _cfg(base: Path, data: Path, out: Path, **kw) -> TrainConfig:
    values = dict(model=str(base), data=data, out=out, mode="lora", lora_r=4, lora_alpha=8,
                  num_crops=1, max_length=256, batch_size=4, learning_rate=1e-3,
                  lr_scheduler="constant", warmup_ratio=0.0, max_steps=6, logging_steps=1,
                  eval_steps=3, save_steps=3, eval_samples=4, report_to="none",
                  gradient_checkpointing=True, freeze_vision=True, seed=0)
    values.update(kw)
    return TrainConfig(**values)


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


def _photo_batch(processor) -> dict:
    images = [[Image.new("RGB", (150, 170), "tan")], [Image.new("RGB", (190, 120), "navy")]]
    prompts = [render_prompt(processor.tokenizer)] * 2
    return processor(text=prompts, images=images, return_tensors="pt", padding_side="left")


def test_lora_run_writes_a_complete_run_directory(base_model, prepared, tmp_path) -> None:
    from productvlm.models.phi3v import Phi3VForCausalLM

    out = tmp_path / "run"
    result = train(_cfg(base_model, prepared, out))
    assert result.global_step == 6
    for name in ("config.yaml", "labels.json", "train_log.jsonl", "adapter/adapter_config.json",
                 "merged/config.json", "merged/model.safetensors", "processor/tokenizer.json"):
        assert (out / name).is_file(), name
    labels = json.loads((out / "labels.json").read_text())
    assert labels["categories"] == ["BAGS", "COATS", "SCARVES"]
    losses = _losses(out)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_gen_parse_rate" in e for e in log)
    # the merged model reloads in the Hub format, with LoRA folded into plain weights
    merged = Phi3VForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    found, problems = read_layout(out / "merged")
    assert problems + compare_layout(found, hub_tensor_shapes(merged.config), "F32") == []
    # ... and it is the trained model: base + adapter's logits, not the base's
    inputs = _photo_batch(load_processor(out / "processor"))
    base = Phi3VForCausalLM.from_pretrained(base_model).eval()
    with torch.no_grad():
        plain = base(**inputs).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()(**inputs).logits
        got = merged.eval()(**inputs).logits
    torch.testing.assert_close(got, adapted, atol=1e-5, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-3


def test_resume_continues_exactly(base_model, prepared, tmp_path, perturb_checkpoint,
                                  assert_continues_from) -> None:
    full = tmp_path / "full"
    train(_cfg(base_model, prepared, full))
    part = tmp_path / "part"
    # stop at step 3 as an interruption would, then continue from its checkpoint
    train(_cfg(base_model, prepared, part, max_steps=3))
    # the same, with the checkpoint's weights changed: the continuation must follow them (a
    # restart from step 0 would reproduce the uninterrupted run's steps 4-6 exactly)
    changed = tmp_path / "changed"
    train(_cfg(base_model, prepared, changed, max_steps=3))
    perturbed = perturb_checkpoint(changed / "checkpoints" / "checkpoint-3")
    train(_cfg(base_model, prepared, changed, resume=True))
    assert_continues_from(changed / "checkpoints" / "checkpoint-6", perturbed)
    # and a `kill -9` in the middle of saving later checkpoints: one lacks trainer_state.json
    # (the Trainer writes it last), one has it torn; --resume must pass over both
    ckpts = part / "checkpoints"
    shutil.copytree(ckpts / "checkpoint-3", ckpts / "checkpoint-5")
    (ckpts / "checkpoint-5" / "trainer_state.json").unlink()
    shutil.copytree(ckpts / "checkpoint-3", ckpts / "checkpoint-6")
    torn = ckpts / "checkpoint-6" / "trainer_state.json"
    torn.write_text(torn.read_text()[:40])
    train(_cfg(base_model, prepared, part, resume=True))
    a, b, c = _losses(full), _losses(part), _losses(changed)
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step
        assert c[step] != pytest.approx(a[step], rel=1e-4, abs=1e-5), step
    assert json.loads(torn.read_text())["global_step"] == 6  # saved over at step 6


def test_an_empty_validation_split_trains_without_evaluating(base_model, prepared, tmp_path,
                                                             capsys, monkeypatch) -> None:
    import productvlm.prepared

    dd = datasets.load_from_disk(str(prepared / "dataset"))
    dd["validation"] = dd["validation"].select([])
    monkeypatch.setattr(productvlm.prepared, "load_prepared", lambda *a, **k: dd)
    out = tmp_path / "run"
    assert train(_cfg(base_model, prepared, out, max_steps=3)).global_step == 3
    assert "validation split is empty" in capsys.readouterr().err
    assert (out / "merged" / "config.json").is_file() and not (out / "calibration").exists()


def test_lora_run_is_calibrated_on_its_validation_split(base_model, prepared, tmp_path) -> None:
    out = tmp_path / "run"
    train(_cfg(base_model, prepared, out, max_steps=3, eval_samples=0))
    # 6 validation rows are too few to calibrate: said, not fatal; 10 or more are enough
    assert not (out / "calibration").exists()
    dd = datasets.load_from_disk(str(prepared / "dataset"))
    dd["validation"] = datasets.concatenate_datasets([dd["validation"], dd["test"]])
    dd.save_to_disk(str(tmp_path / "data" / "dataset"))
    out = tmp_path / "run2"
    train(_cfg(base_model, tmp_path / "data", out, max_steps=3, eval_samples=0))
    cal = json.loads((out / "calibration" / "calibration.json").read_text())
    assert cal["stats"]["validation_rows"] == 12 and cal["given_margins"]
    items = json.loads((out / "training_items.json").read_text())
    assert len(items["product_codes"]) == 24 and "item" in items["title_words"]


def test_resume_with_changed_config_is_refused(base_model, prepared, tmp_path) -> None:
    out = tmp_path / "run"
    save_config(_cfg(base_model, prepared, out), out)
    with pytest.raises(ProductVLMError, match=r"changed config \(learning_rate"):
        train(_cfg(base_model, prepared, out, learning_rate=5e-3, resume=True))
    with pytest.raises(ProductVLMError, match="no checkpoint to resume"):
        train(_cfg(base_model, prepared, out, resume=True))
    with pytest.raises(ProductVLMError, match="nothing to resume"):
        train(_cfg(base_model, prepared, tmp_path / "new", resume=True))


def test_bad_data_and_model_are_one_line_errors(base_model, prepared, tmp_path) -> None:
    broken = tmp_path / "broken"
    ds = datasets.load_from_disk(str(prepared / "dataset"))
    datasets.DatasetDict({"train": ds["train"]}).save_to_disk(str(broken / "dataset"))
    cases = [
        (["--data", str(broken)], "split 'validation' is missing"),
        (["--data", str(tmp_path / "nope")], "prepared dataset not found"),
        (["--model", str(tmp_path / "no-model")], str(tmp_path / "no-model")),
        (["--set", "lora_rank=3"], "unknown key 'lora_rank'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--set", "device=cuda"], "this machine has no CUDA device"))
        cases.append((["--set", "attn_implementation=flex_attention", "--set", "device=cpu"],
                      "flex_attention trains only on a GPU"))
        cases.append((["--set", "liger=true"], "liger: its kernels run on a CUDA GPU"))
    for extra, message in cases:
        args = [str(EXE), "train", "--model", str(base_model), "--data", str(prepared),
                "--out", str(tmp_path / "o"), "--report-to", "none", *extra]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr


def test_wandb_offline_run_has_metrics_and_prediction_table(base_model, prepared,
                                                             tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    wandb.teardown()  # settings cached by an earlier run in this process would pick its dir
    out = tmp_path / "run"
    train(_cfg(base_model, prepared, out, report_to="wandb", max_steps=3, eval_steps=3))
    runs = list(tmp_path.rglob("offline-run-*"))
    assert len(runs) == 1
    run_file = next(runs[0].glob("*.wandb"))
    # wandb's own reader of the .wandb transaction log
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary",
                           "--json", str(run_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["train/global_step"] == 3
    for key in ("train/loss", "train/learning_rate", "train/samples_per_second", "eval/loss",
                "eval/gen_parse_rate"):
        assert isinstance(summary[key], int | float), key
    assert summary["eval/predictions"]["_type"] == "table-file"


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(base_model, prepared, tmp_path) -> None:
    """DDP over gloo with 2 x batch 2 follows the loss curve of 1 process with batch 4."""
    common = ["--model", str(base_model), "--data", str(prepared), "--report-to", "none",
              "--max-steps", "4", "--lr", "0.05", "--set", "lr_scheduler=constant",
              "--set", "warmup_ratio=0",
              "--set", "logging_steps=1", "--set", "eval_samples=0", "--set", "lora_dropout=0",
              "--set", "num_crops=1", "--set", "lora_r=4", "--set", "eval_steps=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(EXE), "train", *common, "--out", str(one), "--batch-size", "4"],
                   check=True, env=env, timeout=600)
    # accelerate's MULTI_CPU launch needs MPI; torchrun (what accelerate wraps for GPUs) is
    # the CPU launcher, and the Trainer picks the gloo backend from its environment
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                    "productvlm.cli", "train", *common, "--out", str(two), "--batch-size", "2"],
                   check=True, env=env, timeout=600)
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # the same epoch fraction at each step: two processes really shared each global batch
    epochs = [[e["epoch"] for e in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())
               if "loss" in e] for d in (one, two)]
    assert epochs[0] == epochs[1]
    assert a[4] < 0.97 * a[1]  # the curve moves, so matching it means something
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=0.02), step


def test_vision_lr_gives_the_image_side_its_own_rate(tmp_path) -> None:
    from transformers import TrainingArguments

    from productvlm.models.phi3v.tiny import tiny_model
    from productvlm.training.trainer import _trainer_class

    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.01,
                             use_cpu=True, report_to=[])
    optimizer = _trainer_class(5e-3, packing=False)(model=model, args=args).create_optimizer()
    groups = [(g["lr"], g["weight_decay"], p) for g in optimizer.param_groups for p in g["params"]]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(id(p) for *_, p in groups) == sorted(id(p) for p in trainable.values())
    rate = {id(p): lr for lr, _, p in groups}
    for name, p in trainable.items():
        assert rate[id(p)] == (5e-3 if "vision_embed_tokens" in name else 1e-3), name
    # weight decay still spares biases and norms on both sides
    assert {(lr, wd) for lr, wd, _ in groups} == {(1e-3, 0.01), (1e-3, 0.0), (5e-3, 0.01),
                                                  (5e-3, 0.0)}
