"""Phi3VProcessor / Phi3VImageProcessor: reference conformance, batching, labels, bad input.

Conformance tests use the real tokenizer and golden outputs in ../shared/phi3v-conformance
(skipped where absent); the rest run anywhere with a tiny tokenizer trained on the spot.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageOps
from safetensors.torch import load_file

from productvlm.models.phi3v.family import mirror_pixels
from productvlm.models.phi3v.image_processing import Phi3VImageProcessor, image_token_count
from productvlm.models.phi3v.processing import IGNORE_INDEX, Phi3VProcessor
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

KIT_CASES = Path(__file__).resolve().parents[2].parent / "shared/phi3v-conformance/tiny/cases.json"
CASE_IDS = [c["id"] for c in json.loads(KIT_CASES.read_text())["cases"]] if KIT_CASES.is_file() \
    else ["kit-missing"]
PROMPT = "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
ANSWER = "Product: Check Cotton Trench Coat, Category: COATS, Full Price: 2,290.00<|end|>\n"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def kit(conformance_dir: Path) -> dict:
    cases = json.loads((conformance_dir / "tiny/cases.json").read_text())["cases"]
    cases = {c["id"]: c for c in cases}
    return {"dir": conformance_dir, "cases": cases}


@pytest.fixture(scope="module")
def real_processors(kit: dict) -> dict[int, Phi3VProcessor]:
    """num_crops -> processor, loaded from the Hub files as a user would."""
    hub = kit["dir"] / "hub"
    return {n: Phi3VProcessor.from_pretrained(hub, num_crops=n) for n in (1, 4)}


def load_case(kit: dict, case_id: str) -> tuple[dict, list[Image.Image], dict[str, torch.Tensor]]:
    case = kit["cases"][case_id]
    images = [Image.open(kit["dir"] / "tiny" / name) for name in case["images"]]
    return case, images, load_file(kit["dir"] / "tiny" / f"case_{case_id}.safetensors")


@pytest.fixture(scope="module")
def tiny_tok():
    return train_tiny_tokenizer(["Check Cotton Trench Coat", "COATS", "Compare these"], 400)


@pytest.fixture(scope="module")
def tiny(tiny_tok) -> Phi3VProcessor:
    """Small crops (112 px, 4x4 merged features) on the same code path as the real model."""
    return Phi3VProcessor(Phi3VImageProcessor(num_crops=4, crop_size=112, num_img_tokens=16),
                          tiny_tok)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------ conformance
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_matches_reference_case(kit, real_processors, case_id):
    case, images, ref = load_case(kit, case_id)
    proc = real_processors[case["num_crops"]]
    out = proc(text=case["prompt"], images=images or None, return_tensors="pt")
    assert torch.equal(out["input_ids"], ref["input_ids"])
    assert torch.equal(out["attention_mask"], ref["attention_mask"])
    assert out["input_ids"].shape[1] == case["seq_len"]
    if not images:
        assert "pixel_values" not in out and "image_sizes" not in out
        return
    assert torch.equal(out["image_sizes"], ref["image_sizes"])
    assert out["pixel_values"].shape == ref["pixel_values"].shape
    assert (out["pixel_values"] - ref["pixel_values"].float()).abs().max() <= 2e-3
    counts = [int((out["input_ids"] == -k).sum()) for k in range(1, len(images) + 1)]
    assert counts == [proc.num_image_tokens(im) for im in images]


@pytest.mark.parametrize(("num_crops", "case_ids"), [
    (1, ["crops1_img0", "text_only", "crops1_two", "crops1_img3", "crops1_img1", "crops1_img4"]),
    (4, ["crops4_img1", "crops4_img0", "crops4_img3"]),
])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_equals_single_calls(kit, real_processors, num_crops, case_ids, side):
    loaded = [load_case(kit, cid) for cid in case_ids]
    if num_crops == 4:  # a text-only row in a batch of 4-crop images
        loaded.append((dict(loaded[0][0], prompt=kit["cases"]["text_only"]["prompt"]), [],
                       load_case(kit, "text_only")[2]))
    proc = real_processors[num_crops]
    out = proc(text=[c["prompt"] for c, _, _ in loaded], images=[ims for _, ims, _ in loaded],
               padding_side=side)
    width = max(ref["input_ids"].shape[1] for _, _, ref in loaded)
    assert out["input_ids"].shape == (len(loaded), width)
    pixel_rows, size_rows = [], []
    for row, (_, images, ref) in enumerate(loaded):
        mask = out["attention_mask"][row].bool()
        n = int(mask.sum())
        assert n == ref["input_ids"].shape[1]
        kept = slice(width - n, width) if side == "left" else slice(0, n)
        assert mask[kept].all()
        assert torch.equal(out["input_ids"][row, kept], ref["input_ids"][0])
        assert (out["input_ids"][row, ~mask] == proc.tokenizer.pad_token_id).all()
        if images:
            pixel_rows.append(ref["pixel_values"].float())
            size_rows.append(ref["image_sizes"])
    assert torch.equal(out["image_sizes"], torch.cat(size_rows))
    assert (out["pixel_values"] - torch.cat(pixel_rows)).abs().max() <= 2e-3


@pytest.mark.parametrize("side", ["left", "right"])
def test_labels_cover_answer_only(kit, real_processors, side):
    case, images, ref = load_case(kit, "crops1_img0")
    other, other_images, _ = load_case(kit, "crops1_two")
    proc = real_processors[1]
    out = proc(text=[case["prompt"], other["prompt"]], images=[images, other_images],
               targets=[case["answer"], "Two coats.<|end|>\n"], padding_side=side)
    labels, ids, mask = out["labels"], out["input_ids"], out["attention_mask"]
    answer = ref["answer_ids"][0]
    n_prompt = ref["input_ids"].shape[1]
    row = ids[0][mask[0].bool()]
    assert torch.equal(row[:n_prompt], ref["input_ids"][0])
    assert torch.equal(row[n_prompt:], answer)
    trained = labels[0] != IGNORE_INDEX
    assert torch.equal(labels[0][trained], answer)
    assert torch.equal(ids[0][trained], answer)
    assert (labels[ids < 0] == IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (labels[1] != IGNORE_INDEX).sum() == len(proc.tokenizer("Two coats.<|end|>\n",
                                                                   add_special_tokens=False)[
        "input_ids"])


def test_from_pretrained_tokenizer_only_folder_and_save_roundtrip(kit, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(kit["dir"] / "hub" / name, folder / name)
    case, images, ref = load_case(kit, "crops4_img1")
    proc = Phi3VProcessor.from_pretrained(folder, num_crops=4)
    assert Phi3VProcessor.from_pretrained(folder).num_crops == 1  # reference default
    out = proc(text=case["prompt"], images=images)
    assert torch.equal(out["input_ids"], ref["input_ids"])

    proc.save_pretrained(tmp_path / "saved")
    saved_tok = json.loads((tmp_path / "saved/tokenizer_config.json").read_text())
    assert saved_tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    saved_img = json.loads((tmp_path / "saved/preprocessor_config.json").read_text())
    assert saved_img["num_crops"] == 4 and saved_img["num_img_tokens"] == 144
    assert "auto_map" not in saved_img
    again = Phi3VProcessor.from_pretrained(tmp_path / "saved")
    assert again.num_crops == 4
    out2 = again(text=case["prompt"], images=images)
    assert torch.equal(out2["input_ids"], ref["input_ids"])
    assert torch.equal(out2["pixel_values"], out["pixel_values"])
    assert again.decode([32010, 29871, 13]) == proc.tokenizer.decode([32010, 29871, 13])
    assert again.batch_decode([[32001], [32007]]) == ["<|assistant|>", "<|end|>"]


def test_auto_processor_loads_native_classes(kit):
    from transformers import AutoImageProcessor, AutoProcessor

    import productvlm.models.phi3v  # noqa: F401  registers the Auto classes

    proc = AutoProcessor.from_pretrained(kit["dir"] / "hub", num_crops=4)
    assert isinstance(proc, Phi3VProcessor) and proc.num_crops == 4
    image_proc = AutoImageProcessor.from_pretrained(kit["dir"] / "hub")
    assert isinstance(image_proc, Phi3VImageProcessor) and image_proc.num_crops == 16


# ------------------------------------------------------------------ HD transform, any crop size
def naive_hd(im: Image.Image, num_crops: int, c: int, mean, std) -> tuple[torch.Tensor, list]:
    """The HD transform spelled out the slow, obvious way, as an independent check."""
    width, height = im.size
    portrait = width < height
    if portrait:
        im = im.transpose(Image.Transpose.TRANSPOSE)
        width, height = height, width
    ratio = width / height
    scale = max(s for s in range(1, num_crops + 1) if s * math.ceil(s / ratio) <= num_crops)
    new_w, new_h = scale * c, int(scale * c / ratio)
    im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    padded_h = math.ceil(new_h / c) * c
    canvas = Image.new("RGB", (new_w, padded_h), (255, 255, 255))
    canvas.paste(im, (0, (padded_h - new_h) // 2))
    if portrait:
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
    x = (np.asarray(canvas, dtype=np.float32) / 255 - np.float32(mean)) / np.float32(std)
    x = torch.from_numpy(x).permute(2, 0, 1)
    views = [F.interpolate(x[None], size=(c, c), mode="bicubic", align_corners=False)[0]]
    H, W = x.shape[1:]  # noqa: N806
    views += [x[:, i:i + c, j:j + c] for i in range(0, H, c) for j in range(0, W, c)]
    views += [torch.zeros(3, c, c)] * (num_crops + 1 - len(views))
    return torch.stack(views), [H, W]


@pytest.mark.parametrize(("size", "num_crops", "crop"), [
    ((640, 480), 4, 112), ((300, 900), 4, 112), ((50, 40), 16, 112), ((1200, 200), 9, 112),
    ((112, 112), 1, 112), ((800, 1000), 16, 336), ((333, 901), 6, 56),
])
def test_hd_transform_matches_naive(size, num_crops, crop):
    proc = Phi3VImageProcessor(num_crops=num_crops, crop_size=crop, num_img_tokens=16)
    im = photo(*size)
    out = proc([im])
    want, hw = naive_hd(im, num_crops, crop, proc.image_mean, proc.image_std)
    assert out["image_sizes"].tolist() == [hw]
    assert out["pixel_values"].shape == (1, num_crops + 1, 3, crop, crop)
    assert (out["pixel_values"][0] - want).abs().max() < 1e-4
    assert out["num_img_tokens"] == [proc.num_image_tokens(size)]
    h, w = hw[0] // crop, hw[1] // crop
    assert out["num_img_tokens"] == [(h * w + 1) * 16 + 1 + (h + 1) * 4]


def test_num_crops_per_call_override():
    proc = Phi3VImageProcessor(num_crops=16, crop_size=56, num_img_tokens=4)
    out = proc([photo(400, 100)], num_crops=2)
    assert out["pixel_values"].shape == (1, 3, 3, 56, 56)
    assert out["image_sizes"].tolist() == [[56, 112]]


def test_image_token_count_real_model():
    assert image_token_count(336, 336) == 313  # 2 * 144 + 1 + 2 * 12
    assert image_token_count(1344, 1344) == 17 * 144 + 1 + 5 * 12
    assert Phi3VImageProcessor(num_crops=16).num_image_tokens((800, 1000)) == 2509


def test_tiny_crops_batch_equals_single_calls(tiny):
    prompts = [PROMPT, "<|user|>\nName a coat.<|end|>\n<|assistant|>\n",
               "<|user|>\n<|image_1|>\n<|image_2|>\nCompare these.<|end|>\n<|assistant|>\n"]
    images = [[photo(640, 480, 1)], [], [photo(90, 300, 2), photo(50, 40, 3)]]
    singles = [tiny(text=p, images=ims or None) for p, ims in zip(prompts, images, strict=True)]
    for side in ("left", "right"):
        out = tiny(text=prompts, images=images, padding_side=side, targets=["a", "b", "c d"])
        for row, single in enumerate(singles):
            mask = out["attention_mask"][row].bool()
            n = single["input_ids"].shape[1]
            prompt_part = out["input_ids"][row][mask][:n]
            assert torch.equal(prompt_part, single["input_ids"][0])
        assert out["pixel_values"].shape == (3, 5, 3, 112, 112)
        assert torch.equal(out["pixel_values"],
                           torch.cat([s["pixel_values"] for s in singles if "pixel_values" in s]))
        assert torch.equal(out["image_sizes"],
                           torch.cat([s["image_sizes"] for s in singles if "image_sizes" in s]))
        ids = out["input_ids"]
        assert int((ids[0] == -1).sum()) == tiny.num_image_tokens((640, 480))
        assert int((ids[2] == -2).sum()) == tiny.num_image_tokens((50, 40))
        assert (out["labels"][ids < 0] == IGNORE_INDEX).all()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("prompt", "images", "message"), [
    ("<|image_1|> and <|image_3|>", 2, "found <|image_1|>, <|image_3|>"),
    ("<|image_2|> <|image_1|>", 2, "each once and in order"),
    ("<|image_1|> <|image_1|>", 1, "each once and in order"),
    ("<|image_1|> <|image_2|>", 1, "2 image tag(s) but 1 image(s) given"),
    ("<|image_1|>", 2, "1 image tag(s) but 2 image(s) given"),
    ("<|image_1|>", 0, "1 image tag(s) but 0 image(s) given"),
    ("no tags here", 1, "no <|image_1|> tag"),
])
def test_bad_tags_raise(tiny, prompt, images, message):
    with pytest.raises(ValueError, match="prompt 1: ") as err:
        tiny(text=["<|image_1|> fine", prompt], images=[[photo(40, 40)], [photo(40, 40)] * images])
    assert message in str(err.value)


@pytest.mark.parametrize("bad", ["cat.jpg", np.zeros((8, 8, 3), dtype=np.float32), 3, None])
def test_not_an_image_raises(tiny, bad):
    with pytest.raises(ValueError, match=r"prompt 0, image 2 is a .*not an image"):
        tiny(text=["<|image_1|> <|image_2|>"], images=[[photo(40, 40), bad]])


def test_images_with_no_tags_never_run_text_only(tiny):
    with pytest.raises(ValueError, match=re.escape("no <|image_1|> tag")):
        tiny(text="What is this?", images=[photo(40, 40)])


def test_batch_images_must_be_one_list_per_prompt(tiny):
    with pytest.raises(ValueError, match="one per prompt"):
        tiny(text=["<|image_1|>", "<|image_1|>"], images=[photo(40, 40), photo(40, 40)])
    with pytest.raises(ValueError, match="padding_side"):
        tiny(text=["hi"], padding_side="middle")


def test_numpy_images_and_single_prompt_form(tiny):
    im = photo(120, 90)
    a = tiny(text=PROMPT, images=im)
    b = tiny(text=[PROMPT], images=[[np.asarray(im)]])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])


@pytest.mark.parametrize(
    ("size", "num_crops"), [((300, 200), 1), ((200, 300), 1), ((330, 250), 4), ((180, 400), 6)]
)
def test_mirroring_processed_views_is_processing_the_mirrored_photo(size, num_crops) -> None:
    # smooth and lopsided: an odd padding may move the mirrored photo by a pixel
    y, x = torch.meshgrid(torch.arange(size[1]), torch.arange(size[0]), indexing="ij")
    pixels = torch.stack(
        [x / size[0], (y / 17).sin() / 2 + 0.5, (x / 23 + y / 31).cos() / 2 + 0.5], -1
    )
    photo = Image.fromarray((pixels * 255).byte().numpy())
    processor = Phi3VImageProcessor(num_crops=num_crops, crop_size=56, num_img_tokens=4)
    out = processor([photo])
    mirrored = processor([ImageOps.mirror(photo)])["pixel_values"][0]
    ours = mirror_pixels(out["pixel_values"][0], out["image_sizes"][0])
    assert out["image_sizes"][0].tolist()[1] > 56 or num_crops == 1
    # equal up to PIL's 8-bit rounding and that pixel; not mirroring is far off
    error = min((ours.roll(k, -1) - mirrored).abs().mean() for k in (-1, 0, 1))
    assert error < 0.1 * (out["pixel_values"][0] - mirrored).abs().mean()
