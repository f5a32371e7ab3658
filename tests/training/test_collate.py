"""The collator: exact labels (answer + end tokens only), any batch size, mixed image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from productvlm.errors import ProductVLMError
from productvlm.training.collate import IGNORE_INDEX, VLMCollator, row_to_example

ROWS = [
    {"title": "Medium Lola Bag", "category": "BAGS", "price": 2290.0,
     "image": Image.new("RGB", (300, 400), "white")},
    {"title": "Check Cotton Trench Coat", "category": "COATS", "price": 1890.0,
     "image": Image.new("RGB", (500, 180), "beige")},
    {"title": "Small Beige Check Scarf", "category": "SCARVES", "price": 450.0,
     "image": Image.new("L", (90, 120), 200)},
]


def test_labels_are_exactly_the_answer_and_its_end_tokens(tiny_processor) -> None:
    tok = tiny_processor.tokenizer
    batch = VLMCollator(tiny_processor)(ROWS)
    assert batch["pixel_values"].shape[:2] == (3, 3)  # 3 images x (num_crops 2 + 1)
    assert batch["image_sizes"].shape == (3, 2)
    for i, row in enumerate(ROWS):
        ex = row_to_example(row, tok)
        labels = batch["labels"][i]
        trained = labels[labels != IGNORE_INDEX]
        assert trained.tolist() == tok(ex.target, add_special_tokens=False)["input_ids"]
        assert tok.decode(trained).endswith("<|end|>\n<|endoftext|>")
        mask = batch["attention_mask"][i].bool()
        ids = batch["input_ids"][i]
        # everything the model reads before the answer is masked: prompt, image, padding
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        assert (labels[:first] == IGNORE_INDEX).all()
        assert (ids[:first] < 0).sum() == tiny_processor.num_image_tokens(row["image"])
        assert (labels[~mask] == IGNORE_INDEX).all()
        assert mask[: int(mask.sum())].all()  # right padded
    assert batch["labels"].dtype == torch.long


def test_batch_of_one_matches_row_in_batch(tiny_processor) -> None:
    collate = VLMCollator(tiny_processor)
    whole = collate(ROWS)
    single = collate([ROWS[1]])
    n = int(single["attention_mask"][0].sum())
    assert torch.equal(whole["input_ids"][1, :n], single["input_ids"][0])
    assert torch.equal(whole["labels"][1, :n], single["labels"][0])
    assert torch.allclose(whole["pixel_values"][1], single["pixel_values"][0])


def test_json_target_format(tiny_processor) -> None:
    ex = row_to_example(ROWS[0], tiny_processor.tokenizer, fmt="json")
    assert ex.target.startswith('{"title": "Medium Lola Bag", "category": "BAGS"')


def test_max_length_truncates_answer_not_prompt(tiny_processor) -> None:
    full = VLMCollator(tiny_processor)([ROWS[0]])
    n = int(full["attention_mask"][0].sum())
    cut = VLMCollator(tiny_processor, max_length=n - 3)([ROWS[0]])
    assert cut["input_ids"].shape[1] == n - 3
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, : n - 3])
    with pytest.raises(ProductVLMError, match="max_length"):
        VLMCollator(tiny_processor, max_length=20)([ROWS[0]])


def test_hflip_mirrors_only_marked_rows(tiny_processor) -> None:
    from PIL import ImageOps

    from productvlm.training.collate import AUGMENT

    half = Image.new("RGB", (224, 224), "white")
    half.paste(Image.new("RGB", (112, 224), "black"))  # left half black: a flip shows
    row = {"title": "Medium Lola Bag", "category": "BAGS", "price": 2290.0, "image": half}
    plain = VLMCollator(tiny_processor)([row])["pixel_values"]
    mirrored = VLMCollator(tiny_processor)([{**row, "image": ImageOps.mirror(half)}])
    flip_all = VLMCollator(tiny_processor, hflip=1.0)
    assert torch.equal(flip_all([row])["pixel_values"], plain)  # evaluation rows: untouched
    out = flip_all([{**row, AUGMENT: True}])["pixel_values"]
    assert torch.equal(out, mirrored["pixel_values"]) and not torch.equal(out, plain)


def test_shift_moves_the_photo_and_fills_with_its_background() -> None:
    from productvlm.training.collate import augment

    photo = Image.new("RGB", (100, 80), (240, 235, 230))
    photo.paste((200, 20, 20), (40, 30, 60, 50))  # a red 20x20 product in the middle
    torch.manual_seed(0)
    moved = [augment(photo, hflip=0.0, shift=0.1) for _ in range(20)]
    assert all(m.size == photo.size for m in moved)
    arrays = [np.asarray(m) for m in moved]
    red = [np.argwhere((a == (200, 20, 20)).all(-1)) for a in arrays]
    assert all(len(r) == 400 for r in red)  # never cut: the whole product, as big as before
    offsets = {(int(r[0][1]) - 40, int(r[0][0]) - 30) for r in red}
    assert len(offsets) > 5 and all(abs(dx) <= 10 and abs(dy) <= 8 for dx, dy in offsets)
    rest = np.concatenate([a.reshape(-1, 3) for a in arrays])
    assert set(map(tuple, rest.tolist())) == {(240, 235, 230), (200, 20, 20)}  # no black edges
    assert augment(photo, hflip=0.0, shift=0.0) is photo
