"""Phi-4-multimodal's pieces of its own: the image processor without torchvision, the vision
LoRA its checkpoint ships, and its image encoder's attention (tests/models/test_families.py
takes it through the shared pipeline with the other families)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from productvlm.models.loading import load_model
from productvlm.models.phi4mm.images import Phi4MultimodalImageProcessorPil, crop_grid
from productvlm.models.processors import load_processor
from productvlm.models.tiny_families import save_tiny_family
from productvlm.prompts import render_prompt

TEXTS = [f"Product: {a} Lola Bag, Category: BAGS, Full Price: {p},290.00"
         for a in ("Medium", "Small", "Check") for p in (1, 2, 3)] * 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_family("phi4mm", tmp_path_factory.mktemp("phi4mm") / "m", TEXTS,
                            vocab_size=300, hidden_size=64, layers=2, vision_hidden=32,
                            vision_layers=2, crops=4)


def test_the_crop_grid_covers_the_photo_up_to_the_most_crops() -> None:
    assert crop_grid(448, 448, 448, 36) == (1, 1)
    assert crop_grid(900, 500, 448, 36) == (3, 2)  # as many as it covers
    assert crop_grid(4000, 1000, 448, 4) == (4, 1)  # past the most: the nearest ratio
    assert crop_grid(1000, 1000, 448, 4) == (2, 2)
    assert crop_grid(1000, 1000, 448, 1) == (1, 1)
    # a tie of ratios (2:2 and 1:1) goes to the bigger grid when the photo half fills it
    assert crop_grid(3000, 3000, 448, 4) == (2, 2)


def test_tokens_at_the_real_size_are_transformers_formula() -> None:
    """448-px crops of 14-px patches: 256 global tokens + 16 row ends + 1, then the crops'."""
    images = Phi4MultimodalImageProcessorPil()
    out = images([Image.new("RGB", (900, 500), "tan")], return_tensors="pt")
    masks = out["image_attention_mask"][0, 1:]  # 6 crops (3 x 2), 32 x 32 patches each
    assert out["image_pixel_values"].shape == (1, 7, 3, 448, 448)
    assert out["image_sizes"].tolist() == [[896, 1344]]
    pooled = masks[:, 0::2, 0::2].reshape(2, 3, 16, 16).transpose(1, 2).reshape(32, 48)
    want = 256 + 1 + int(pooled.sum()) + int(pooled[:, 0].sum()) + 16
    assert out["num_img_tokens"].tolist() == [want] == [1596]
    # 500 px scaled by 1344 / 900 is 746 rows of 896: the last 150 (10 patches) are padding
    assert masks[3:, -10:, :].sum() == 0 and masks[3:, :-10, :].all()


def test_pixels_are_scaled_to_minus_one_one_and_padded_white() -> None:
    images = Phi4MultimodalImageProcessorPil(size={"height": 112, "width": 112},
                                             patch_size=14, dynamic_hd=4)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = images([Image.fromarray(array)], return_tensors="pt")
    want = torch.from_numpy(array).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(out["image_pixel_values"][0, 1], want)  # the one crop
    torch.testing.assert_close(out["image_pixel_values"][0, 0], want)  # the whole, same size
    wide = images([Image.new("RGB", (112, 56), "black")], return_tensors="pt")
    crop, mask = wide["image_pixel_values"][0, 1], wide["image_attention_mask"][0, 1]
    assert (crop[:, :56] == -1).all() and (crop[:, 56:] == 1).all()  # photo, then white
    assert mask[:4].all() and not mask[4:].any()  # 56 px: 4 rows of 14-px patches


def test_a_batch_pads_photos_to_the_most_crops_with_empty_crops() -> None:
    images = Phi4MultimodalImageProcessorPil(size={"height": 112, "width": 112},
                                             patch_size=14, dynamic_hd=4)
    photos = [Image.new("RGB", (224, 224), "tan"), Image.new("RGB", (100, 100), "navy")]
    out = images(photos, return_tensors="pt")
    alone = images([photos[1]], return_tensors="pt")
    assert out["image_pixel_values"].shape[:2] == (2, 5)
    torch.testing.assert_close(out["image_pixel_values"][1, :2], alone["image_pixel_values"][0])
    assert (out["image_pixel_values"][1, 2:] == 0).all()
    assert out["image_attention_mask"][1, 2:].all()  # empty crops: every patch "real"
    assert out["num_img_tokens"][1] == alone["num_img_tokens"][0]


def test_tokens_per_photo_are_what_the_model_fills(folder: Path) -> None:
    """For photos of many shapes the processor writes as many image tokens as the model's
    image embedding makes features (it fails on a mismatch) and the prompt has them."""
    model, processor = load_model(folder).eval(), load_processor(folder)
    prompt = render_prompt(processor.tokenizer)
    photos = [Image.new("RGB", size, "tan") for size in
              ((112, 112), (300, 120), (40, 400), (500, 500), (113, 111))]
    batch = processor(text=[prompt] * len(photos), images=[[p] for p in photos],
                      return_tensors="pt", padding=True)
    counts = (batch["input_ids"] == processor.tokenizer.image_token_id).sum(1).tolist()
    alone = [processor.image_processor([p])["num_img_tokens"][0] for p in photos]
    assert counts == alone
    with torch.no_grad():
        assert model(**batch).logits.isfinite().all()


def test_saved_as_the_hub_format_and_loaded_back(folder: Path, tmp_path: Path) -> None:
    processor = load_processor(folder)
    processor.save_pretrained(tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "processor_config.json").read_text())
    assert saved["image_processor"]["image_processor_type"] == "Phi4MultimodalImageProcessor"
    assert saved["processor_class"] == "Phi4MultimodalProcessor"
    assert "audio_processor" in saved  # the speech half is kept, as the checkpoint has it
    again = load_processor(tmp_path / "p")
    assert again.image_processor.to_dict() == processor.image_processor.to_dict()


def test_the_vision_lora_the_checkpoint_ships_is_merged_in(folder: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = tmp_path / "base"
    plain = load_model(folder)
    plain.save_pretrained(base)
    load_processor(folder).save_pretrained(base)
    shipped = get_peft_model(load_model(folder), LoraConfig(
        r=4, lora_alpha=8, target_modules=r"model\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)"))
    for name, param in shipped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    shipped.save_pretrained(base / "vision-lora")
    processor = load_processor(base)
    batch = processor(text=[render_prompt(processor.tokenizer)],
                      images=[[Image.new("RGB", (150, 90), "tan")]], return_tensors="pt")
    with torch.no_grad():
        want = shipped.eval()(**batch).logits
        got = load_model(base).eval()(**batch).logits
        without = plain.eval()(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, without, atol=1e-3)
    (base / "vision-lora" / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception, match="vision-lora: cannot load the adapter"):
        load_model(base)


def test_the_image_encoder_sees_the_whole_crop_with_or_without_padding(folder: Path) -> None:
    """transformers marks Phi-4's SigLIP attention causal: under SDPA a batch without padded
    patches would attend causally, one with them bidirectionally. productvlm's loading makes
    it bidirectional always, as eager attention (and the original model) is."""
    tower = load_model(folder).model.embed_tokens_extend.image_embed.img_processor.eval()
    eager = load_model(folder, attn_implementation="eager")
    eager_tower = eager.model.embed_tokens_extend.image_embed.img_processor.eval()
    crops = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 8, 8, dtype=torch.bool)
    mask[2, :, 5:] = False  # a crop with padding beside the two whole ones
    with torch.no_grad():
        whole = tower(crops[:2], patch_attention_mask=mask[:2]).last_hidden_state
        padded = tower(crops, patch_attention_mask=mask).last_hidden_state[:2]
        reference = eager_tower(crops[:2], patch_attention_mask=mask[:2]).last_hidden_state
    torch.testing.assert_close(whole, padded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(whole, reference, atol=1e-5, rtol=1e-4)


def test_offline_without_the_shipped_adapter_in_the_cache_is_a_clear_error(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from productvlm.errors import ProductVLMError
    from productvlm.models.loading import _merge_shipped_adapter

    def offline(repo: str, filename: str, **kwargs: object) -> str:
        raise LocalEntryNotFoundError(f"{repo}/{filename} is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ProductVLMError, match="cannot tell whether it ships vision-lora/"):
        _merge_shipped_adapter(load_model(folder), "microsoft/Phi-4-multimodal-instruct",
                               "vision-lora")


def test_the_remote_code_checkpoint_format_says_what_to_load_instead(tmp_path: Path) -> None:
    from productvlm.errors import ProductVLMError
    from productvlm.models.loading import check_source

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi4mm"}))
    with pytest.raises(ProductVLMError, match="remote-code format.*--revision refs/pr/70"):
        check_source(tmp_path)
