"""Serving fixtures: a real tiny Phi-3-vision (random weights), its Predictor, sample photos.

Random weights are enough for the API: decoding is constrained to the answer format, so
every answer parses into a title, a category and a price, just not the right ones.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

CATEGORIES = ["BAGS", "SCARVES", "COATS"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model folder in the Hub format with processor and tokenizer."""
    from productvlm.models.phi3v.tiny import save_tiny_model
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    texts = [f"Product: {a} {b}, Category: {c}, Full Price: {p},290.00"
             for a in ("Medium", "Small", "Check") for b in ("Lola Bag", "Wool Scarf", "Trench")
             for c, p in zip(CATEGORIES, (1, 2, 3), strict=True)]
    tok = train_tiny_tokenizer(texts * 10, vocab_size=320)
    return save_tiny_model(tmp_path_factory.mktemp("serve") / "tiny-phi3v", tokenizer=tok,
                           num_crops=1)


@pytest.fixture(scope="session")
def predictor(tiny_model_dir: Path) -> Any:
    """The one prediction path, loaded from the tiny folder, answers forced into the format."""
    import torch

    from productvlm.inference import Predictor

    torch.set_num_threads(1)  # the test machine's cores are shared
    return Predictor.load(tiny_model_dir, batch_size=8, constrained=True, max_new_tokens=32,
                          categories=CATEGORIES)


def photo_bytes(fmt: str = "JPEG", size: tuple[int, int] = (160, 120),
                colour: tuple[int, int, int] = (150, 90, 40)) -> bytes:
    """A small product-like photo: a bag shape on a light background."""
    img = Image.new("RGB", size, (245, 243, 240))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rounded_rectangle((w * 0.3, h * 0.35, w * 0.7, h * 0.9), 6, fill=colour)
    d.arc((w * 0.38, h * 0.1, w * 0.62, h * 0.5), 180, 360, fill=colour, width=4)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photo() -> Any:
    """``photo(fmt="JPEG", size=(160, 120), colour=...)`` -> encoded bytes of a sample photo."""
    return photo_bytes


@pytest.fixture(scope="session")
def sample_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "lola-bag.jpg"
    path.write_bytes(photo_bytes())
    return path


@pytest.fixture
def client_for(predictor: Any) -> Iterator[Any]:
    """``client_for(**settings)``: a TestClient (lifespan running) of an app with settings."""
    from fastapi.testclient import TestClient

    from productvlm.serving.app import create_app
    from productvlm.serving.config import ServeConfig

    opened: list[Any] = []

    def make(**settings: Any) -> Any:
        app = create_app(predictor, ServeConfig(model="tiny-phi3v", **settings))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)
