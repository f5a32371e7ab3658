"""Packed batches (training/packing.py) against padded ones, for every family's tiny model.

A packed batch must train exactly what the padded one trains: the same loss and the same
LoRA gradients (fp32, SDPA on CPU; tolerances below are a few float32 roundings of the
values compared), labels that are exactly each row's answer and its end tokens, and each
sample's logits equal to those of the sample run alone, so no sample sees another.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from productvlm.errors import ProductVLMError
from productvlm.models.families import family_of
from productvlm.models.loading import LoraSpec, load_model
from productvlm.models.phi3v.tiny import save_tiny_model, tiny_config
from productvlm.models.processors import load_processor
from productvlm.models.tiny_families import save_tiny_family
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer
from productvlm.training.collate import IGNORE_INDEX, VLMCollator
from productvlm.training.config import TrainConfig
from productvlm.training.packing import Packer, pack, packing_pays, tokens_per_step
from productvlm.training.trainer import train

ROWS = [("Medium Lola Bag", "BAGS", 1290.0, (150, 170), "tan"),
        ("Check Cotton Trench Coat With Belt", "COATS", 2390.0, (230, 120), "navy"),
        ("Scarf", "SCARVES", 450.0, (120, 260), "firebrick")]
TEXTS = [f"Product: {t}, Category: {c}, Full Price: {p:,.2f}" for t, c, p, _, _ in ROWS] * 8


def _folder(family: str, root: Path) -> Path:
    if family == "phi3v":
        tok = train_tiny_tokenizer(TEXTS, 300)
        cfg = tiny_config(len(tok), hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id,
                          vision={"hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2})
        return save_tiny_model(root / family, config=cfg, tokenizer=tok, num_crops=2)
    return save_tiny_family(family, root / family, TEXTS, vocab_size=300, hidden_size=64,
                            layers=2, vision_hidden=32, vision_layers=2, crops=2,
                            rope_theta=100.0)


@pytest.fixture(scope="module", params=["phi3v", "qwen2_5_vl", "qwen3_vl", "smolvlm", "phi4mm"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = _folder(request.param, tmp_path_factory.mktemp("packing"))
    model = load_model(folder, dtype=torch.float32, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at 0: move it, so its gradients reach A too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    processor = load_processor(folder)
    rows = [{"title": t, "category": c, "price": p, "image": Image.new("RGB", size, colour)}
            for t, c, p, size, colour in ROWS]
    batch = VLMCollator(processor, max_length=4096)(rows)
    return request.param, model.eval(), processor, batch


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_packed_batch_trains_what_the_padded_one_does(family) -> None:
    name, model, _, batch = family
    real, padded = tokens_per_step(batch)
    assert real < padded  # the rows differ in length: there is padding to drop
    packed = Packer(model)(batch)
    assert packed["input_ids"].shape == (1, real)
    assert "attention_mask" not in packed
    loss_pad, grads_pad = _loss_and_grads(model, batch)
    loss_pack, grads_pack = _loss_and_grads(model, packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    assert grads_pad and grads_pad.keys() == grads_pack.keys()
    assert all("lora_" in n for n in grads_pad), name
    assert any(float(g.abs().max()) > 0 for n, g in grads_pad.items() if "lora_A" in n)
    for key, grad in grads_pad.items():
        scale = float(grad.abs().max()) or 1.0
        torch.testing.assert_close(grads_pack[key], grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, k=key: f"{name} {k}: {m}")


def test_packed_labels_are_exactly_each_answer(family) -> None:
    _, model, processor, batch = family
    packed = Packer(model)(batch)
    tok = processor.tokenizer
    labels, starts = packed["labels"][0], packed["position_ids"].reshape(-1, packed[
        "labels"].shape[1])[0] == 0
    segments = torch.tensor_split(labels, starts.nonzero().flatten()[1:].tolist())
    assert len(segments) == len(ROWS)
    collate = VLMCollator(processor)
    for segment, row in zip(segments, ROWS, strict=True):
        answer = tok.decode(segment[segment != IGNORE_INDEX])
        example = {"title": row[0], "category": row[1], "price": row[2],
                   "image": Image.new("RGB", row[3], row[4])}
        one = collate([example])
        assert answer == tok.decode(one["labels"][0][one["labels"][0] != IGNORE_INDEX])
        assert f"Product: {row[0]}, Category: {row[1]}" in answer
        assert segment[0] == IGNORE_INDEX  # a sample's first token is never a target


def test_no_sample_attends_to_another(family) -> None:
    """Each sample's logits in the packed row equal those of the sample run alone (its own
    positions, its own image): nothing of the other samples reaches it."""
    name, model, processor, batch = family
    collate = VLMCollator(processor)
    packed = Packer(model)(batch)
    with torch.no_grad():
        logits = model(**packed).logits[0]
    start = 0
    for t, c, p, size, colour in ROWS:
        alone = collate([{"title": t, "category": c, "price": p,
                          "image": Image.new("RGB", size, colour)}])
        with torch.no_grad():
            own = model(**alone).logits[0]
        torch.testing.assert_close(logits[start:start + own.shape[0]], own, rtol=1e-4,
                                   atol=1e-4, msg=lambda m, r=t: f"{name} {r}: {m}")
        start += own.shape[0]
    assert start == logits.shape[0]


def test_packing_changes_nothing_it_need_not() -> None:
    batch = {"input_ids": torch.tensor([[4, -1, -1, 5], [6, -1, -1, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
             "labels": torch.tensor([[-100, -100, -100, 5], [-100, -100, -100, -100]]),
             "pixel_values": torch.ones(2, 3, 4, 4), "image_sizes": torch.tensor([[4, 4]] * 2)}
    packed = pack(batch, numbered_image_tags=True)
    # Phi-3's image tags: the second sample's image is image 2 of the packed row
    assert packed["input_ids"].tolist() == [[4, -1, -1, 5, 6, -2, -2]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert packed["pixel_values"] is batch["pixel_values"]
    assert packed["image_sizes"] is batch["image_sizes"]
    with pytest.raises(Exception, match="right-padded"):
        pack({**batch, "attention_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])})


def test_packing_pays_only_with_kernels_that_skip_empty_blocks() -> None:
    assert not packing_pays("sdpa") and not packing_pays("eager")
    assert packing_pays("flash_attention_2") and packing_pays("flex_attention")


def test_family_table_says_how_to_position(family) -> None:
    name, model, _, _ = family
    fam = family_of(model.get_base_model())
    assert bool(fam.rope_index) == name.startswith("qwen")
    assert fam.numbered_image_tags == (name == "phi3v")


def _train_cfg(base: Path, data: Path, out: Path, **kw: Any) -> TrainConfig:
    values = dict(model=str(base), data=data, out=out, mode="lora", lora_r=4, lora_alpha=8,
                  lora_dropout=0.0, num_crops=2, max_length=512, batch_size=4,
                  learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0, max_steps=4,
                  logging_steps=1, eval_steps=2, save_steps=2, eval_samples=0,
                  report_to="none", gradient_checkpointing=False, freeze_vision=True,
                  calibrate=False, merge=False, seed=0)
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared catalog whose rows differ in length (titles, photos' shapes): padding."""
    import datasets

    out = tmp_path_factory.mktemp("varied")
    feats = datasets.Features({"title": datasets.Value("string"),
                               "category": datasets.Value("string"),
                               "price": datasets.Value("float64"), "image": datasets.Image()})

    def rows(n: int, seed: int) -> list[dict]:
        picked = [ROWS[(i + seed) % len(ROWS)] for i in range(n)]
        return [{"title": t + " Item" * ((i + seed) % 4), "category": c, "price": p,
                 "image": Image.new("RGB", size, colour)}
                for i, (t, c, p, size, colour) in enumerate(picked)]

    datasets.DatasetDict({name: datasets.Dataset.from_list(rows(n, s), features=feats)
                          for name, n, s in (("train", 16, 0), ("validation", 8, 1),
                                             ("test", 4, 2))}).save_to_disk(str(out / "dataset"))
    return out


def test_a_packed_run_trains_as_a_padded_one(base_model, varied, tmp_path, capfd) -> None:
    """The Trainer's step packs (packing: true): the same losses, train and validation, as
    the padded run, step by step (no dropout, so the two runs are the same computation)."""
    logs = {}
    for packing in (False, True):
        out = tmp_path / f"packing-{packing}"
        train(_train_cfg(base_model, varied, out, packing=packing))
        logs[packing] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert "packing on" in capfd.readouterr().err
    for key in ("loss", "eval_loss"):
        padded = [e[key] for e in logs[False] if key in e]
        packed = [e[key] for e in logs[True] if key in e]
        assert len(padded) == (4 if key == "loss" else 2) and len(packed) == len(padded)
        assert packed == pytest.approx(padded, rel=1e-4), key


def test_checkpointing_auto_follows_the_estimate(base_model, varied, monkeypatch) -> None:
    from productvlm.prepared import load_prepared
    from productvlm.training import memory

    model = load_model(base_model, dtype=torch.float32,
                       lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    collator = VLMCollator(load_processor(base_model, num_crops=2), max_length=512)
    rows = load_prepared(varied)["train"]
    cfg = _train_cfg(base_model, varied, Path("unused"), gradient_checkpointing="auto",
                     packing="auto")
    real, padded = memory.sample_steps(collator, rows, cfg.batch_size)
    assert 0 < real < padded  # the rows differ in length, as in the packed run above
    plans = {}
    for gb in (1e-3, 100.0):
        monkeypatch.setattr(memory, "device_memory", lambda device, b=gb: (int(b * 1e9), "x"))
        plans[gb] = memory.plan_step(model, collator, rows, cfg, torch.device("cpu"))
    assert plans[1e-3].checkpointing and not plans[100.0].checkpointing
    assert not plans[100.0].packing  # sdpa: a packed row's dense mask costs more than padding
    assert f"{padded:,} padded" in plans[100.0].message
    assert "gradient checkpointing off" in plans[100.0].message
    flash = memory.plan_step(model, collator, rows, cfg.model_copy(
        update={"attn_implementation": "flash_attention_2"}), torch.device("cpu"))
    assert flash.packing and f"{real:,} tokens" in flash.message
    with pytest.raises(ProductVLMError, match="flex_attention trains only on a GPU"):
        memory.plan_step(model, collator, rows, cfg.model_copy(
            update={"attn_implementation": "flex_attention"}), torch.device("cpu"))
    fixed = memory.plan_step(model, collator, rows, cfg.model_copy(
        update={"gradient_checkpointing": True, "packing": False}), torch.device("cpu"))
    assert (fixed.checkpointing, fixed.packing) == (True, False)
    assert "as the config sets" in fixed.message


def test_micro_batch_auto_fills_the_device(base_model, varied, monkeypatch) -> None:
    """On a GPU, an optimizer step's photos (batch_size x grad_accum) are re-split into the
    largest forward passes that fit: more memory, larger passes, never another step size."""
    from productvlm.prepared import load_prepared
    from productvlm.training import memory

    model = load_model(base_model, dtype=torch.float32,
                       lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    collator = VLMCollator(load_processor(base_model, num_crops=2), max_length=512)
    rows = load_prepared(varied)["train"]
    cfg = _train_cfg(base_model, varied, Path("unused"), batch_size=2, grad_accum=4,
                     gradient_checkpointing="auto", packing=False)
    assert cfg.micro_batch == "auto"
    splits = []
    for gb in [1e-5 * 2 ** k for k in range(16)]:
        monkeypatch.setattr(memory, "device_memory", lambda device, b=gb: (int(b * 1e9), "x"))
        plan = memory.plan_step(model, collator, rows, cfg, torch.device("cuda"))
        assert plan.micro_batch * plan.grad_accum == 8 and "filled to the device" in plan.message
        splits.append((plan.micro_batch, plan.checkpointing))
    micros = [m for m, _ in splits]
    assert micros == sorted(micros) and micros[-1] == 8 and not splits[-1][1]
    assert {2, 4} & set(micros)  # passes between one photo and the whole step
    assert splits[0][1] and not any(c for m, c in splits if m == 8)  # checkpointing when short
    # on the CPU a larger pass is no faster: batch_size as set
    cpu = memory.plan_step(model, collator, rows, cfg, torch.device("cpu"))
    assert (cpu.micro_batch, cpu.grad_accum) == (2, 4) and "batch_size: the CPU" in cpu.message
    fixed = memory.plan_step(model, collator, rows, cfg.model_copy(update={"micro_batch": 4}),
                             torch.device("cuda"))
    assert (fixed.micro_batch, fixed.grad_accum) == (4, 2) and "as the config sets" in fixed.message
    with pytest.raises(ValueError, match=r"micro_batch \(3\) must divide batch_size x grad_accum"):
        _train_cfg(base_model, varied, Path("unused"), batch_size=2, grad_accum=4, micro_batch=3)


def test_a_resplit_step_trains_as_the_whole_one(base_model, varied, tmp_path) -> None:
    """Two passes of 2 photos accumulated train what one pass of 4 does: the loss is weighted
    by answer tokens across passes (the rows differ in length), so the same losses and the
    same LoRA weights."""
    from safetensors.torch import load_file

    logs, weights = {}, {}
    for micro in (4, 2):
        out = tmp_path / f"micro-{micro}"
        train(_train_cfg(base_model, varied, out, micro_batch=micro))
        logs[micro] = [e["loss"] for e in map(json.loads, (out / "train_log.jsonl")
                                              .read_text().splitlines()) if "loss" in e]
        weights[micro] = load_file(out / "checkpoints" / "checkpoint-4" /
                                   "adapter_model.safetensors")
    assert len(logs[2]) == 4 and logs[2] == pytest.approx(logs[4], rel=1e-4)
    for name, value in weights[4].items():
        torch.testing.assert_close(weights[2][name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++") or os.environ.get("CXX")),
                    reason="torch's inductor builds flex attention's CPU kernel with a C++ "
                    "compiler, and this machine has none")
@pytest.mark.parametrize("name", [
    "phi3v",
    # each compiles its own flex kernels (~20 s on 2 cores): the default run keeps one
    pytest.param("smolvlm", marks=pytest.mark.slow),
    pytest.param("phi4mm", marks=pytest.mark.slow),
])
def test_flex_attention_on_a_packed_batch_gives_the_padded_loss(name, tmp_path) -> None:
    """torch's flex attention (the kernel that computes only each sample's block; compiled by
    inductor, on the CPU here) on the packed batch: the loss of SDPA on the padded one. Its
    backward runs only on a GPU (bench/gpu_check.py compares the losses there)."""
    folder = _folder(name, tmp_path)
    batch = VLMCollator(load_processor(folder))(
        [{"title": t, "category": c, "price": p, "image": Image.new("RGB", size, colour)}
         for t, c, p, size, colour in ROWS])
    losses = []
    for attn in ("sdpa", "flex_attention"):
        model = load_model(folder, dtype=torch.float32, attn_implementation=attn).eval()
        with torch.no_grad():
            losses.append(model(**(Packer(model)(batch) if attn != "sdpa" else batch)).loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)


def test_a_kernel_the_family_does_not_take_is_a_one_line_error(tmp_path) -> None:
    folder = _folder("qwen2_5_vl", tmp_path)
    with pytest.raises(ProductVLMError, match=r"flex_attention.*use sdpa$") as err:
        load_model(folder, attn_implementation="flex_attention")
    assert "\n" not in str(err.value)
