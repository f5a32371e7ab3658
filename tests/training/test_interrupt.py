"""Ctrl-C saves a checkpoint and exits cleanly; `kill -9` loses at most the steps since the
last checkpoint; `--resume` continues from there."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from productvlm.rundir import last_complete_checkpoint

EXE = Path(sys.executable).with_name("productvlm")
pytestmark = pytest.mark.slow


def _args(base: Path, data: Path, out: Path, max_steps: int, save_steps: int) -> list[str]:
    return [str(EXE), "train", "--model", str(base), "--data", str(data), "--out", str(out),
            "--report-to", "none", "--max-steps", str(max_steps), "--batch-size", "2",
            "--set", "num_crops=1", "--set", "lora_r=4", "--set", "logging_steps=1",
            "--set", f"save_steps={save_steps}", "--set", f"eval_steps={save_steps}",
            "--set", "eval_samples=0", "--set", "lr_scheduler=constant"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 600, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(log.read_text() if log else proc.stderr.read())
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def _complete_from(ckpt_dir: Path, step: int) -> bool:
    """Whether a checkpoint at `step` or later has been saved to the end."""
    for path in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else ():
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("global_step", 0) >= step:
            return True
    return False


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(base_model, prepared, tmp_path,
                                                       perturb_checkpoint,
                                                       assert_continues_from) -> None:
    out = tmp_path / "run"
    proc = _start(_args(base_model, prepared, out, 500, 1000))
    for line in proc.stdout:  # the first training log: steps are running
        if line.startswith("{'loss'"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "interrupted at step" in err and "--resume" in err
    assert "Traceback" not in err
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert len(ckpts) == 1
    step = int(ckpts[0].name.split("-")[1])
    # changed weights in the checkpoint: a real resume continues from them (a restart from
    # step 0 would not see them)
    perturbed = perturb_checkpoint(ckpts[0])
    done = subprocess.run(_args(base_model, prepared, out, step + 2, 1000) + ["--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    newest = last_complete_checkpoint(out / "checkpoints")
    assert json.loads((Path(newest) / "trainer_state.json").read_text())["global_step"] == step + 2
    assert_continues_from(Path(newest), perturbed)


def test_kill_9_then_resume(base_model, prepared, tmp_path, perturb_checkpoint,
                            assert_continues_from) -> None:
    out = tmp_path / "run"
    # output to files, not pipes nobody reads: a full pipe would stall the run
    log = tmp_path / "train.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(_args(base_model, prepared, out, 500, 2), stdout=sink,
                                stderr=subprocess.STDOUT, text=True)
    # any complete checkpoint from step 4 on: at ~30 steps/s the Trainer's rotation
    # (save_total_limit) deletes checkpoint-4 itself within a fraction of a second
    _wait_for(lambda: _complete_from(out / "checkpoints", 4), proc, log=log)
    proc.kill()  # SIGKILL: no handler runs, maybe in the middle of saving a later checkpoint
    proc.wait()
    # the run may have got a few steps further than checkpoint-4 before the kill landed
    last = last_complete_checkpoint(out / "checkpoints")
    assert last is not None
    step = int(Path(last).name.split("-")[1])
    perturbed = perturb_checkpoint(Path(last))
    done = subprocess.run(_args(base_model, prepared, out, step + 4, 2) + ["--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in lines if "loss" in e]
    assert steps[-1] == step + 4
    assert steps == sorted(set(steps)) and min(steps) == 1  # the history before the kill, once
    assert_continues_from(out / "checkpoints" / f"checkpoint-{step + 4}", perturbed)


def test_ctrl_c_in_the_vision_warm_up_then_resume(base_model, prepared, tmp_path) -> None:
    out = tmp_path / "run"
    args = _args(base_model, prepared, out, 2, 1000) + [
        "--set", "mode=full", "--set", "freeze_vision=false",
        "--set", "gradient_checkpointing=false", "--set", "vision_warmup_epochs=100",
        "--set", "num_workers=0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = bytearray()

    def pump() -> None:  # tqdm redraws with "\r": read what comes, not lines
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            seen.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    _wait_for(lambda: re.search(rb"vision warm-up: +\d+%\|[^|]*\| *[1-9]\d*/", bytes(seen)), proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    reader.join(timeout=10)
    err = bytes(seen).decode(errors="replace")
    assert proc.returncode == 2, err
    assert "interrupted in the vision warm-up at step" in err and "Traceback" not in err
    step = int(re.search(r"warm-up at step (\d+)", err)[1])
    assert not (out / "checkpoints").exists()

    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads((out / "vision_warmup.json").read_text())
    assert stats["resumed_at_step"] == step and stats["steps"] == 100 * 12 > step
    assert (out / "merged" / "config.json").is_file()
