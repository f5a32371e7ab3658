"""Vision warm-up: the image side learns the photos' labels; nothing else moves."""

from __future__ import annotations

import json

import pytest
import torch

from productvlm.errors import ProductVLMError
from productvlm.models.loading import load_model
from productvlm.models.processors import load_processor
from productvlm.prepared import load_prepared
from productvlm.prompts import title_words
from productvlm.training.config import TrainConfig
from productvlm.training.vision_warmup import warm_up_vision


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
    model = load_model(cfg.model, cfg=cfg)
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
    model = load_model(cfg.model, cfg=cfg)
    processor = load_processor(cfg.model, num_crops=1)
    ds = load_prepared(prepared)
    with pytest.raises(ProductVLMError, match="freeze_vision: false"):
        warm_up_vision(model, processor, ds["train"], None, cfg)


def test_warm_up_on_fewer_rows_than_a_batch(base_model, prepared, tmp_path) -> None:
    cfg = _cfg(base_model, prepared, tmp_path / "run", batch_size=8, vision_warmup_epochs=2)
    model = load_model(cfg.model, cfg=cfg)
    processor = load_processor(cfg.model, num_crops=1)
    ds = load_prepared(prepared)
    stats = warm_up_vision(model, processor, ds["train"].select(range(3)), None, cfg)
    assert stats["steps"] == 2


def test_an_interrupted_warm_up_resumes_from_its_saved_state(base_model, prepared,
                                                              tmp_path) -> None:
    cfg = _cfg(base_model, prepared, tmp_path / "run")
    processor = load_processor(cfg.model, num_crops=1)
    ds = load_prepared(prepared)
    total = 6 * (len(ds["train"]) // 4)

    def side(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()
                if "vision_embed_tokens." in n}

    first = load_model(cfg.model, cfg=cfg)
    calls = iter(range(10**6))
    with pytest.raises(ProductVLMError, match=rf"warm-up at step 5 of {total}.*--resume"):
        warm_up_vision(first, processor, ds["train"], None, cfg,
                       should_stop=lambda: next(calls) == 4)  # "Ctrl-C" during step 5
    state = torch.load(tmp_path / "run" / "vision_warmup" / "state.pt", weights_only=True)
    assert state["step"] == 5 and not state["done"]
    assert all(torch.equal(state["side"][n.split("vision_embed_tokens.", 1)[1]], p)
               for n, p in side(first).items())

    second = load_model(cfg.model, cfg=cfg)  # a new process: fresh weights
    stats = warm_up_vision(second, processor, ds["train"], ds["validation"], cfg, resume=True)
    assert stats["steps"] == total and stats["resumed_at_step"] == 5
    assert stats["validation_category_accuracy"] == 1.0
    done = side(second)

    # once done, a later --resume (killed before fine-tuning saved anything) reuses the result
    third = load_model(cfg.model, cfg=cfg)
    assert warm_up_vision(third, processor, ds["train"], None, cfg, resume=True) == stats
    assert all(torch.equal(p, done[n]) for n, p in side(third).items())

    # a fresh run into the same folder drops that state at once: killed before it saves its
    # own, nothing stale is left for a later --resume
    def killed() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        warm_up_vision(load_model(cfg.model, cfg=cfg), processor, ds["train"], None,
                       cfg, should_stop=killed)
    assert not (tmp_path / "run" / "vision_warmup" / "state.pt").exists()
