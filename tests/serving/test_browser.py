"""The web page in a real browser: Debian's headless Chromium driven by Playwright.

A live uvicorn server (tiny model) on loopback; the test chooses photos in the page and reads
the product cards. Skips, with the reason, only where /usr/bin/chromium is missing (`make
venv` installs it with apt-get where it can), and fails instead under CI (CI=true), where
`make test` has installed it; Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def live_server(predictor: Any) -> Iterator[str]:
    from productvlm.serving.config import ServeConfig

    yield from _serve(predictor, ServeConfig(model="tiny-phi3v", max_wait_ms=20))


@pytest.fixture(scope="module")
def calibrated_server(calibrated_run: dict[str, Path]) -> Iterator[str]:
    """A calibrated model behind the page; every answer under its confidence threshold."""
    from productvlm.serving.app import load_predictor
    from productvlm.serving.config import ServeConfig

    cfg = ServeConfig(model=str(calibrated_run["run"]), max_new_tokens=48, low_confidence=1.0)
    yield from _serve(load_predictor(cfg), cfg)


def _serve(predictor: Any, cfg: Any) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    from productvlm.serving.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(predictor, cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _missing(reason: str) -> None:
    """Skip where the browser cannot be had; under CI, where `make test` installs it, fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page(live_server: str) -> Iterator[Any]:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found: `make venv` installs Debian's chromium "
                 "(apt-get install chromium), which needs root and the Debian mirror")
    try:
        from playwright import sync_api
    except ImportError as e:
        _missing(f"playwright is not installed ({e}); `make venv` installs the dev extra")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1200, "height": 900})
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            browser.close()


def _answered_card(page: Any, server: str, photo: Path, model: str | None = None) -> Any:
    """Open the page (once it names ``model``, when given), choose ``photo`` and return its
    card once the answer is on it."""
    page.goto(server + "/")
    if model is not None:
        page.wait_for_function(f"document.querySelector('#model').textContent === '{model}'")
    page.set_input_files("#files", str(photo))
    card = page.locator(".card").first
    card.locator(".price").wait_for(state="visible")
    return card


def test_upload_a_photo_and_read_its_product_card(page: Any, live_server: str,
                                                  sample_photo: Path) -> None:
    card = _answered_card(page, live_server, sample_photo, model="tiny-phi3v")
    assert "done" in card.get_attribute("class")
    title = card.locator(".title").inner_text()
    category = card.locator(".category").inner_text()
    price = card.locator(".price").inner_text()
    assert title.strip() and category in ("BAGS", "SCARVES", "COATS")
    assert any(ch.isdigit() for ch in price), price
    assert card.locator(".filename").inner_text() == sample_photo.name
    # the preview shows the chosen photo itself
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth") > 0


def test_several_photos_and_an_error_in_plain_words(page: Any, live_server: str,
                                                    sample_photo: Path, tmp_path: Path,
                                                    photo: Any) -> None:
    page.goto(live_server + "/")
    other = tmp_path / "scarf.png"
    other.write_bytes(photo("PNG", colour=(30, 60, 130)))
    fake = tmp_path / "invoice.jpg"
    fake.write_bytes(b"%PDF-1.4 not a photo")
    page.set_input_files("#files", [str(sample_photo), str(other), str(fake)])
    page.wait_for_function("document.querySelectorAll('.card.pending').length === 0")
    cards = page.locator(".card")
    assert cards.count() == 3
    names = [cards.nth(i).locator(".filename").inner_text() for i in range(3)]
    assert names == [sample_photo.name, "scarf.png", "invoice.jpg"]
    assert "done" in cards.nth(1).get_attribute("class")
    failed = cards.nth(2)
    assert "failed" in failed.get_attribute("class")
    assert "not a JPEG, PNG" in failed.locator(".error").inner_text()
    assert page.locator("#summary").inner_text() == "3 photos"


def test_the_card_shows_the_price_range_and_marks_a_guess(page: Any, calibrated_server: str,
                                                          sample_photo: Path) -> None:
    card = _answered_card(page, calibrated_server, sample_photo)
    assert "80% range:" in card.locator(".interval").inner_text()
    assert "low" in card.get_attribute("class")
    assert "Low confidence" in card.locator(".trust-label").inner_text()


@pytest.fixture(scope="module")
def family_server(family_run: dict[str, Path]) -> Iterator[str]:
    """The page of a calibrated Qwen2.5-VL / SmolVLM run (see tests/conftest.py)."""
    from productvlm.serving.app import load_predictor
    from productvlm.serving.config import ServeConfig

    cfg = ServeConfig(model=str(family_run["run"]), max_new_tokens=48, max_wait_ms=20)
    yield from _serve(load_predictor(cfg), cfg)


def test_the_page_answers_with_each_model_family(page: Any, family_server: str,
                                                 family_run: dict[str, Path],
                                                 sample_photo: Path) -> None:
    family = family_run["family"].name
    card = _answered_card(page, family_server, sample_photo)
    assert "done" in card.get_attribute("class"), family
    assert card.locator(".title").inner_text().strip()
    assert any(ch.isdigit() for ch in card.locator(".price").inner_text())
    assert "80% range:" in card.locator(".interval").inner_text()


@pytest.fixture(scope="module")
def fields_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny model whose labels.json gives its answer a colour field."""
    import json

    from productvlm.answer import DEFAULT_SCHEMA, FieldDomain, known_field
    from productvlm.inference import Predictor
    from productvlm.models.phi3v.tiny import save_tiny_model
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer
    from productvlm.serving.config import ServeConfig

    schema = DEFAULT_SCHEMA.with_extras([known_field("colour")])
    texts = [f"Product: Check {b}, Category: {c}, Full Price: 1,290.00, Colour: {k}"
             for b in ("Lola Bag", "Scarf") for c in ("BAGS", "SCARVES") for k in ("Beige", "Navy")]
    folder = save_tiny_model(tmp_path_factory.mktemp("fields") / "tiny-colour",
                             tokenizer=train_tiny_tokenizer(texts * 10, vocab_size=320),
                             num_crops=1)
    (folder / "labels.json").write_text(json.dumps({
        "categories": ["BAGS", "SCARVES"], "currency": "USD",
        "answer_fields": schema.extras_json(),
        "field_domains": {"colour": FieldDomain(("Beige", "Navy")).to_dict()}}))
    predictor = Predictor.load(folder, batch_size=4, max_new_tokens=40)
    yield from _serve(predictor, ServeConfig(model="tiny-colour", max_wait_ms=20))


def test_the_card_shows_the_models_answer_fields(page: Any, fields_server: str,
                                                 sample_photo: Path) -> None:
    card = _answered_card(page, fields_server, sample_photo, model="tiny-colour")
    assert card.locator(".fields dt").all_inner_texts() == ["Colour"]
    assert card.locator(".fields dd").inner_text() in ("Beige", "Navy")
