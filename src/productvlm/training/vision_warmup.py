"""Vision warm-up: teach a randomly initialised image side to see products before fine-tuning.

Phi-3-vision's CLIP tower arrives pretrained. A tower that starts from random weights (the
demo's tiny model, or a new architecture) learns slowly through the language model alone, and
then limits the whole model (docs/demo-trials.md has the measurements). So, as real VLMs start
from a pretrained tower, the warm-up first trains the image side (CLIP tower, separators,
projection) to predict from each training photo its category and the words of its title
(colour, finish, silhouette, size: a tagging task); fine-tuning then starts from a tower that
already tells a tote from a shoulder bag.

The heads are thrown away afterwards; only the image side's weights change. Training photos
are augmented as in fine-tuning (``hflip``, ``shift``). It is skipped on ``--resume`` from a
fine-tuning checkpoint: the checkpoint holds the warmed-up weights.

Interruptions: the warm-up's state (image side, heads, optimizer, schedule, step) goes to
``OUT/vision_warmup/state.pt`` at epoch ends (at most once every :data:`SAVE_SECONDS`), at a
Ctrl-C and when it is done; ``--resume`` before the first fine-tuning checkpoint continues
from there. The photos' order and mirroring after such a restart are fresh draws: the run is
statistically, not bitwise, the same as an uninterrupted one.

>>> stats = warm_up_vision(model, processor, ds["train"], ds["validation"], cfg)  # doctest: +SKIP
>>> stats["validation_category_accuracy"]  # doctest: +SKIP
0.91
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from productvlm.dist import is_main_process
from productvlm.errors import ProductVLMError
from productvlm.models.families import ModelFamily, family_of, unwrap
from productvlm.prompts import title_words
from productvlm.rundir import RunDir
from productvlm.training.collate import augment
from productvlm.training.config import TrainConfig

TAG_WEIGHT = 1.0  # title-word loss relative to the category loss
SAVE_SECONDS = 60.0  # least time between two saves of the warm-up's state at epoch ends


def _image_side(model: Any) -> nn.Module:
    """The image side (its family's: Phi-3's ``vision_embed_tokens``; Qwen's ``visual``;
    SmolVLM's ``vision_model`` and ``connector`` in a list)."""
    model = unwrap(model)
    return family_of(model).image_side(model)


class _Heads(nn.Module):
    """Pooled image embedding -> category logits and title-word logits."""

    def __init__(self, width: int, categories: int, words: int) -> None:
        super().__init__()
        self.category = nn.Linear(width, categories)
        self.words = nn.Linear(width, words)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.category(pooled), self.words(pooled)


CACHE_BYTES = 1 << 30  # processed photos kept per loader process (float16)


class _Photos(torch.utils.data.Dataset):
    """Rows -> (pixel tensors, labels); augmentation runs here, in the loader's workers.

    Decoding a JPEG and resizing it costs more than the tiny tower's step, and the warm-up
    sees each photo for many epochs: so each processed photo is kept (float16, up to
    :data:`CACHE_BYTES`). Where the family's processed views mirror as tensors
    (``mirrors_views``: Phi-3) a photo is processed once and mirrored as a tensor; moves
    (``shift``) change the pixels the processor sees, so with ``shift`` every photo is
    processed afresh (and mirrored after).

    Other processors lay out their tensors in their own ways (Qwen's flattened patches), so
    there the photo and its mirror image are each processed once and kept. :meth:`collate`
    joins the photos' tensors as the family's processor batches them.
    """

    def __init__(self, rows: Any, image_processor: Any, cats: dict[str, int],
                 words: dict[str, int], hflip: float, shift: float, family: ModelFamily,
                 keep: bool = True) -> None:
        self.family = family
        self.images = rows.select_columns(["image"])
        self.titles, self.categories = rows["title"], rows["category"]
        self.image_processor, self.cats, self.words = image_processor, cats, words
        self.hflip, self.shift = hflip, shift
        self.cache: dict[int, dict[str, torch.Tensor]] = {}  # photo's (or 2 x + mirrored)
        self.room = CACHE_BYTES if keep and not shift else 0

    def __len__(self) -> int:
        return len(self.titles)

    def _views(self, i: int) -> dict[str, torch.Tensor]:
        if i in self.cache:
            return self.cache[i]
        image = self.images[i]["image"].convert("RGB")
        if self.shift:  # moved here, mirrored in __getitem__: the same draws as augment()
            image = augment(image, 0.0, self.shift)
        tensors = self.family.warmup_photo(self.image_processor, image)
        self._keep(i, tensors)
        return tensors

    def _keep(self, key: int, tensors: dict[str, torch.Tensor]) -> None:
        size = sum(v.numel() * 2 for v in tensors.values())
        if size <= self.room:
            self.cache[key] = {k: v.half() if v.is_floating_point() else v
                               for k, v in tensors.items()}
            self.room -= size

    def __getitem__(self, i: int) -> dict[str, Any]:
        tags = torch.zeros(len(self.words))
        for w in title_words(self.titles[i]):
            if w in self.words:
                tags[self.words[w]] = 1.0
        labels = {"category": self.cats.get(self.categories[i], -100), "tags": tags}
        if not self.family.mirrors_views:  # each photo processed as it is and mirrored
            flip = bool(self.hflip) and torch.rand(()).item() < self.hflip
            return {**self._processed(i, flip), **labels}
        tensors = self._views(i)
        if self.hflip and torch.rand(()).item() < self.hflip:
            tensors = self.family.mirror_photo(tensors)
        return {**{k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
                **labels}

    def _processed(self, i: int, flip: bool) -> dict[str, torch.Tensor]:
        """A transformers family's tensors for photo ``i`` (mirrored with ``flip``)."""
        key = 2 * i + flip
        if key in self.cache:
            return {k: v.float() if v.is_floating_point() else v
                    for k, v in self.cache[key].items()}
        image = augment(self.images[i]["image"].convert("RGB"), float(flip), self.shift)
        tensors = self.family.warmup_photo(self.image_processor, image)
        self._keep(key, tensors)
        return tensors

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = ("category", "tags")
        batch = {k: torch.stack([torch.as_tensor(x[k]) for x in items]) for k in labels}
        photos = [{k: v for k, v in x.items() if k not in labels} for x in items]
        return {**self.family.join_photos(photos), **batch}


def _pooled(model: Any, side: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per photo, the mean of the image tokens the decoder would read (the family's)."""
    base = unwrap(model)
    return family_of(base).image_features(base, side, batch)


def warm_up_vision(model: Any, processor: Any, train_rows: Any, val_rows: Any | None,
                   cfg: TrainConfig, *, resume: bool = False,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train the image side of ``model`` in place on category + title-word tags.

    Returns figures (epochs, seconds, train loss, validation category accuracy), also
    written to ``cfg.out/vision_warmup.json``. ``resume``: continue from the saved state, if
    any. ``should_stop`` (checked after every step): save the state and raise
    ProductVLMError, as a Ctrl-C does to fine-tuning.
    """
    from transformers import get_cosine_schedule_with_warmup

    side = _image_side(model)
    params = [p for p in side.parameters() if p.requires_grad]
    if not params:
        raise ProductVLMError("vision_warmup_epochs needs a trainable image side: set "
                              "freeze_vision: false (or vision_warmup_epochs: 0)")
    categories = sorted(set(train_rows["category"]))
    vocab = sorted({w for t in train_rows["title"] for w in title_words(t)})
    cats = {c: i for i, c in enumerate(categories)}
    words = {w: i for i, w in enumerate(vocab)}
    width = unwrap(model).config.get_text_config().hidden_size
    heads = _Heads(width, len(cats), len(words)).to(next(side.parameters()).device)
    mean_tags = max(1.0, sum(len(title_words(t)) for t in train_rows["title"]) / len(train_rows))

    photos = _Photos(train_rows, processor.image_processor, cats, words, cfg.hflip, cfg.shift,
                     family_of(unwrap(model)))
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        photos, batch_size=cfg.batch_size, shuffle=True, generator=generator,
        drop_last=len(photos) > cfg.batch_size,  # a lone short batch would still be a step
        collate_fn=photos.collate, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0)
    steps = max(1, math.ceil(cfg.vision_warmup_epochs * len(loader)))
    optimizer = torch.optim.AdamW([*params, *heads.parameters()], lr=cfg.vision_warmup_lr,
                                  weight_decay=0.05)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    device = next(side.parameters()).device

    state_path = RunDir(cfg.out).vision_warmup_state
    step, losses, spent = 0, [], 0.0
    if resume and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        side.load_state_dict(saved["side"])
        if saved["done"]:
            print(f"vision warm-up: done in an earlier run; weights from {state_path}")
            return saved["stats"]
        heads.load_state_dict(saved["heads"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        step, losses, spent = saved["step"], saved["losses"], saved["seconds"]
    elif is_main_process():  # a fresh run: an earlier run's state must not be resumed later
        state_path.unlink(missing_ok=True)
    first_step = step

    def save(done: bool, stats: dict[str, Any] | None = None) -> None:
        if not is_main_process():
            return
        state: dict[str, Any] = {"done": done, "side": side.state_dict(), "stats": stats}
        if not done:
            state |= {"heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                      "schedule": schedule.state_dict(), "generator": generator.get_state(),
                      "step": step, "losses": losses[-20:],
                      "seconds": spent + time.perf_counter() - started}
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, state_path)  # a kill -9 mid-save leaves the previous state whole

    was_training = model.training
    model.train()
    started = last_save = time.perf_counter()
    from tqdm.auto import tqdm

    with tqdm(total=steps, initial=step, desc="vision warm-up", unit="step") as bar:
        while step < steps:
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                cat_logits, tag_logits = heads(_pooled(model, side, batch))
                loss = nn.functional.cross_entropy(cat_logits, batch["category"]) + TAG_WEIGHT * (
                    nn.functional.binary_cross_entropy_with_logits(
                        tag_logits, batch["tags"], reduction="sum") / len(batch["tags"])
                    / mean_tags)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*params, *heads.parameters()], 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
                if should_stop is not None and should_stop():
                    save(False)
                    raise ProductVLMError(
                        f"interrupted in the vision warm-up at step {step} of {steps}; state "
                        f"saved in {state_path.parent}; continue with --resume")
                if step >= steps:
                    break
            if step < steps and time.perf_counter() - last_save >= SAVE_SECONDS:
                save(False)
                last_save = time.perf_counter()
    stats: dict[str, Any] = {
        "epochs": cfg.vision_warmup_epochs, "steps": steps, "lr": cfg.vision_warmup_lr,
        "seconds": round(spent + time.perf_counter() - started, 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
    }
    if first_step:
        stats["resumed_at_step"] = first_step
    if val_rows is not None and len(val_rows):
        stats["validation_category_accuracy"] = _accuracy(model, side, heads, photos, val_rows,
                                                          cats)
    model.train(was_training)
    if is_main_process():  # DDP then starts all from rank 0's weights
        cfg.out.mkdir(parents=True, exist_ok=True)
        RunDir(cfg.out).vision_warmup_stats.write_text(json.dumps(stats, indent=1))
    save(True, stats)
    return stats


def _accuracy(model: Any, side: nn.Module, heads: _Heads, photos: _Photos, rows: Any,
              cats: dict[str, int]) -> float:
    """Category accuracy of the warm-up head on ``rows`` (unseen categories count as wrong)."""
    plain = _Photos(rows, photos.image_processor, cats, photos.words, 0.0, 0.0, photos.family,
                    keep=False)
    side.eval()
    device = next(side.parameters()).device
    right = 0
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            batch = plain.collate([plain[i] for i in range(start, min(start + 32, len(rows)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, _ = heads(_pooled(model, side, batch))
            right += int((logits.argmax(-1) == batch["category"]).sum())
    return round(right / len(rows), 4)
