"""predict and serve feed the model the same pixels for the same file, read and decoded once.

Photos whose decoding has pitfalls (an EXIF rotation, transparency, CMYK) go through
`productvlm predict` (local files) and through POST /v1/predict (uploads) with one Predictor
whose generate() records the pixel values it is given; the two must be equal tensor for tensor.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from productvlm.inference import Predictor
from productvlm.predict import PredictConfig, predict_files, read_images


def _drawing(mode: str, size: tuple[int, int]) -> Image.Image:
    """Something asymmetric, so a wrong rotation or mirror changes the pixels."""
    img = Image.new("RGB", size, (240, 236, 230))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle((w * 0.1, h * 0.1, w * 0.5, h * 0.3), fill=(160, 40, 30))
    d.ellipse((w * 0.55, h * 0.5, w * 0.9, h * 0.95), fill=(30, 60, 150))
    return img.convert(mode)


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show rotated 90 degrees clockwise
    buf = io.BytesIO()
    _drawing("RGB", (180, 120)).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _png_with_alpha() -> bytes:
    img = _drawing("RGBA", (150, 150))
    img.putalpha(Image.linear_gradient("L").resize((150, 150)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    _drawing("CMYK", (130, 170)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


PHOTOS = {"rotated.jpg": _exif_rotated_jpeg, "alpha.png": _png_with_alpha,
          "cmyk.jpg": _cmyk_jpeg}


@pytest.fixture
def recorded(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Pixel values of every image generate() receives, one (crops, 3, S, S) tensor each."""
    seen: list[torch.Tensor] = []
    real = predictor.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.extend(kwargs["pixel_values"].detach().clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor.model, "generate", spy)
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *a, **k: predictor))
    return seen


def test_predict_and_serve_give_the_model_identical_pixels(
        predictor: Predictor, recorded: list[torch.Tensor], client_for: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, make in PHOTOS.items():
        (tmp_path / name).write_bytes(make())
    names = list(PHOTOS)

    assert predict_files(PredictConfig(model="tiny", images=[str(tmp_path / n) for n in names],
                                       json_lines=True)) == 0
    by_predict = list(recorded)
    predicted = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    recorded.clear()
    files = [("files", (n, (tmp_path / n).read_bytes())) for n in names]
    served = client_for(max_wait_ms=0).post("/v1/predict", files=files)
    assert served.status_code == 200, served.text
    by_serve = list(recorded)

    assert len(by_predict) == len(by_serve) == len(names)
    # the batch engine groups photos by shape, so the model may get them in another order
    unmatched = list(by_serve)
    for a in by_predict:
        same = [i for i, b in enumerate(unmatched) if a.shape == b.shape and torch.equal(a, b)]
        assert same, "a photo's pixels differ between predict and serve"
        unmatched.pop(same[0])
    # and so the same answers
    assert [r["raw"] for r in predicted] == [r["raw"] for r in served.json()["results"]]


def test_the_photos_are_hard_cases(tmp_path: Path) -> None:
    """The rotation is applied (portrait now), alpha is put on white, CMYK becomes RGB."""
    for name, make in PHOTOS.items():
        (tmp_path / name).write_bytes(make())
    rotated, alpha, cmyk = read_images([(n, str(tmp_path / n)) for n in PHOTOS], None)
    assert rotated.size == (120, 180) and rotated.mode == "RGB"
    assert alpha.getpixel((0, 0)) == (255, 255, 255)  # fully transparent corner -> white
    assert cmyk.mode == "RGB" and cmyk.size == (130, 170)


def test_a_local_file_is_read_once_and_decoded_once(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name, make in PHOTOS.items():
        (tmp_path / name).write_bytes(make())
    calls = {"read": 0, "open": 0, "save": 0}
    real_read, real_open, real_save = Path.read_bytes, Image.open, Image.Image.save

    def read_bytes(self: Path) -> bytes:
        calls["read"] += 1
        return real_read(self)

    def image_open(*args: Any, **kwargs: Any) -> Any:
        calls["open"] += 1
        return real_open(*args, **kwargs)

    def save(self: Image.Image, *args: Any, **kwargs: Any) -> Any:
        calls["save"] += 1
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Image, "open", image_open)
    monkeypatch.setattr(Image.Image, "save", save)
    for name in PHOTOS:
        calls.update(read=0, open=0, save=0)
        (image,) = read_images([(name, str(tmp_path / name))], None)
        assert isinstance(image, Image.Image), image
        assert calls == {"read": 1, "open": 1, "save": 0}, name
