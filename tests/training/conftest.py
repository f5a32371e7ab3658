"""Tiny tokenizer and processor shared by the training tests."""

from __future__ import annotations

import pytest

from productvlm.models.phi3v.image_processing import Phi3VImageProcessor
from productvlm.models.phi3v.processing import Phi3VProcessor
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

TITLES = ["Medium Lola Bag", "Check Cotton Trench Coat", "Small Beige Check Scarf",
          "Leather Ankle Boots", "Vintage Check Cashmere Scarf"]


@pytest.fixture(scope="session")
def tiny_processor() -> Phi3VProcessor:
    tok = train_tiny_tokenizer(TITLES * 4 + ["BAGS COATS SCARVES BOOTS 0123456789,."], 300)
    images = Phi3VImageProcessor(num_crops=2, crop_size=112, num_img_tokens=16)
    return Phi3VProcessor(images, tok)
