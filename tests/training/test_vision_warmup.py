"""Vision warm-up: the image side learns the photos' labels; nothing else moves."""

from __future__ import annotations

import json

import pytest
import torch

from productvlm.errors import ProductVLMError
from productvlm.models.loading import load_model, load_processor
from productvlm.training.config import TrainConfig
from productvlm.training.trainer import load_prepared
from productvlm.training.vision_warmup import title_words, warm_up_vision


def _cfg(base, data, out, **kw) -> TrainConfig:
    values = dict(model=str(base), data=data, out=out, mode="full", freeze_vision=False,
                  gradient_checkpointing=False, precision="fp32", num_crops=1, batch_size=4,
                  vision_warmup_epochs=6, vision_warmup_lr=3e-3, hflip=0.5, seed=0,
                  report_to="none")
    values.update(kw)
    return TrainConfig(**values)


def test_title_words_are_lower_cased_words() -> None:
    assert title_words("Mini Beige  Check Tote") == ["mini", "beige", "check", "tote"]


def test_warm_up_trains_only_the_image_side_and_learns_the_categories(
        base_model, prepared, tmp_path) -> None:
    cfg = _cfg(base_model, prepared, tmp_path / "run")
    model = load_model(cfg.model, cfg=cfg, bf16=False)
    processor = load_processor(cfg.model, num_crops=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = load_prepared(prepared)

    stats = warm_up_vision(model, processor, ds["train"], ds["validation"], cfg)

    # three categories of differently coloured photos: the head must tell them apart
    assert stats["validation_category_accuracy"] == 1.0
    assert stats["steps"] == 6 * (len(ds["train"]) // 4)
    assert json.loads((tmp_path / "run" / "vision_warmup.json").read_text()) == stats
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("vision_embed_tokens." in n for n in changed)
    assert any("img_projection" in n for n in changed)
    assert any("encoder.layers.0." in n for n in changed)


def test_warm_up_needs_a_trainable_image_side(base_model, prepared, tmp_path) -> None:
    cfg = _cfg(base_model, prepared, tmp_path / "run", mode="lora", freeze_vision=True)
    model = load_model(cfg.model, cfg=cfg, bf16=False)
    processor = load_processor(cfg.model, num_crops=1)
    ds = load_prepared(prepared)
    with pytest.raises(ProductVLMError, match="freeze_vision: false"):
        warm_up_vision(model, processor, ds["train"], None, cfg)


def test_warm_up_on_fewer_rows_than_a_batch(base_model, prepared, tmp_path) -> None:
    cfg = _cfg(base_model, prepared, tmp_path / "run", batch_size=8, vision_warmup_epochs=2)
    model = load_model(cfg.model, cfg=cfg, bf16=False)
    processor = load_processor(cfg.model, num_crops=1)
    ds = load_prepared(prepared)
    stats = warm_up_vision(model, processor, ds["train"].select(range(3)), None, cfg)
    assert stats["steps"] == 2
