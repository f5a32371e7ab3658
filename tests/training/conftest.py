"""Tiny tokenizer, processor, model and prepared dataset shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from PIL import Image

from productvlm.models.phi3v.image_processing import Phi3VImageProcessor
from productvlm.models.phi3v.processing import Phi3VProcessor
from productvlm.models.phi3v.tiny import save_tiny_model, tiny_config
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

TITLES = ["Medium Lola Bag", "Check Cotton Trench Coat", "Small Beige Check Scarf",
          "Leather Ankle Boots", "Vintage Check Cashmere Scarf"]


@pytest.fixture(scope="session")
def tiny_processor() -> Phi3VProcessor:
    tok = train_tiny_tokenizer(TITLES * 4 + ["BAGS COATS SCARVES BOOTS 0123456789,."], 300)
    images = Phi3VImageProcessor(num_crops=2, crop_size=112, num_img_tokens=16)
    return Phi3VProcessor(images, tok)


COLOURS = {"BAGS": "tan", "COATS": "navy", "SCARVES": "firebrick"}


def _rows(n: int, seed: int) -> list[dict]:
    rows = []
    for i in range(n):
        cat = list(COLOURS)[(i + seed) % 3]
        w, h = 120 + 7 * i, 160 + 5 * (i % 4)
        rows.append({"product_code": str(1000 + seed * 100 + i), "title": f"{cat.title()} Item",
                     "category": cat, "price": 100.0 * (1 + (i + seed) % 3),
                     "image": Image.new("RGB", (w, h), COLOURS[cat])})
    return rows


def write_prepared(out: Path, validation: int = 6) -> Path:
    """A prepared dataset of colour photos in ``out``: 24 train, ``validation``, 6 test rows."""
    feats = datasets.Features({"product_code": datasets.Value("string"),
                               "title": datasets.Value("string"),
                               "category": datasets.Value("string"),
                               "price": datasets.Value("float64"), "image": datasets.Image()})
    dd = datasets.DatasetDict({
        name: datasets.Dataset.from_list(_rows(n, s), features=feats)
        for name, n, s in (("train", 24, 0), ("validation", validation, 1), ("test", 6, 2))
    })
    dd.save_to_disk(str(out / "dataset"))
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tiny_tokenizer([f"Product: {c.title()} Item, Category: {c}" for c in COLOURS], 300)
    cfg = tiny_config(len(tok), hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id,
                      vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2})
    return save_tiny_model(tmp_path_factory.mktemp("base") / "m", config=cfg, tokenizer=tok,
                           num_crops=1)


def _perturb_checkpoint(checkpoint: Path, std: float = 0.5, seed: int = 0) -> dict:
    """Add N(0, std) noise to every LoRA B of a Trainer checkpoint's adapter, in place; returns
    the perturbed B tensors by name.

    A run resumed from it continues from these weights (a few small optimizer steps away),
    where a restart from step 0 (ignoring the checkpoint) is nowhere near them.
    """
    import torch
    from safetensors.torch import load_file, save_file

    path = checkpoint / "adapter_model.safetensors"
    weights = load_file(path)
    gen = torch.Generator().manual_seed(seed)
    for name, value in weights.items():
        if "lora_B" in name:
            weights[name] = value + torch.randn(value.shape, generator=gen) * std
    save_file(weights, path, metadata={"format": "pt"})
    return {k: v for k, v in weights.items() if "lora_B" in k}


def _assert_continues_from(checkpoint: Path, perturbed: dict, tolerance: float = 0.05) -> None:
    """``checkpoint`` (saved after a resume) holds ``perturbed``'s weights, moved by no more
    than a few optimizer steps can move them."""
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "adapter_model.safetensors")
    gaps = {k: float((saved[k] - v).abs().max()) for k, v in perturbed.items()}
    assert max(gaps.values()) < tolerance, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]


@pytest.fixture(scope="session")
def perturb_checkpoint():
    """``perturb_checkpoint(checkpoint_dir, std=0.5)`` -> the perturbed LoRA B tensors."""
    return _perturb_checkpoint


@pytest.fixture(scope="session")
def assert_continues_from():
    """``assert_continues_from(later_checkpoint, perturbed)``: the run went on from them."""
    return _assert_continues_from
