"""inference/ + predict.py: the one prediction path, on a real tiny random Phi-3-vision.

Random weights answer nonsense, which is the point: constrained decoding must still make
every answer parse, batching must not change any row's greedy answer, and loading must find
the processor, prompt, format and categories in a run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from productvlm.answer import parse_answer
from productvlm.errors import ProductVLMError
from productvlm.inference import Prediction, Predictor
from productvlm.rundir import resolve_model

CATEGORIES = ["BAGS", "SCARVES", "COATS"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # the test machine's cores are shared


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Hub-format model folder with its processor and tokenizer."""
    from productvlm.models.phi3v.tiny import save_tiny_model
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    texts = [f"Product: {a} {b}, Category: {c}, Full Price: {p},290.00"
             for a in ("Medium", "Small", "Check") for b in ("Lola Bag", "Wool Scarf", "Trench")
             for c, p in zip(CATEGORIES, (1, 2, 3), strict=True)]
    tok = train_tiny_tokenizer(texts * 10, vocab_size=320)
    return save_tiny_model(tmp_path_factory.mktemp("infer") / "tiny", tokenizer=tok, num_crops=1)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Photos of different sizes and colours: rows get different image-token counts."""
    sizes = [(160, 120), (90, 200), (300, 100), (64, 64), (128, 96)]
    return [Image.new("RGB", s, (40 * i, 200 - 30 * i, 90)) for i, s in enumerate(sizes)]


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.load(model_dir, batch_size=8, max_new_tokens=24, categories=CATEGORIES)


def test_batched_answers_equal_one_at_a_time(predictor: Predictor,
                                             photos: list[Image.Image]) -> None:
    """Left padding, the attention mask and the KV cache must not change a greedy answer."""
    for constrained in (True, False):
        predictor.constrained = constrained
        try:
            batched = [p.raw for p in predictor.predict(photos)]
            single = [predictor.predict([im])[0].raw for im in photos]
        finally:
            predictor.constrained = True
        assert batched == single
        assert len(set(batched)) > 1  # different photos, different answers


def test_a_static_cache_gives_the_same_answers(predictor: Predictor,
                                              photos: list[Image.Image]) -> None:
    """The KV cache allocated once at full length (what lets CUDA compile the decode step):
    the same greedy answers, constrained and free."""
    for constrained in (True, False):
        predictor.constrained = constrained
        try:
            dynamic = [p.raw for p in predictor.predict(photos)]
            predictor.cache = "static"
            static = [p.raw for p in predictor.predict(photos)]
        finally:
            predictor.constrained, predictor.cache = True, "dynamic"
        assert static == dynamic


def test_constrained_answers_parse_and_free_ones_do_not(predictor: Predictor,
                                                        photos: list[Image.Image]) -> None:
    done: list[tuple[int, int]] = []
    preds = predictor.predict(photos, progress=lambda n, total: done.append((n, total)))
    assert done[-1] == (len(photos), len(photos))
    for p in preds:
        assert isinstance(p, Prediction) and p.ok, (p.raw, p.error)
        assert p.category in CATEGORIES and p.price > 0 and p.title
        assert p.raw.startswith("Product: ") and p.latency_ms > 0
    predictor.constrained = False
    try:
        free = predictor.predict(photos)
    finally:
        predictor.constrained = True
    assert not any(p.ok for p in free), [p.raw for p in free]
    assert all(p.error and p.title is None for p in free)


def _run_dir(tmp: Path, model_dir: Path, fmt: str = "json", labels: bool = True) -> Path:
    run = tmp / f"run-{fmt}-{labels}"
    shutil.copytree(model_dir, run / "merged")
    shutil.copytree(model_dir, run / "processor")
    for f in (run / "merged").glob("token*"):
        f.unlink()  # the processor must come from processor/
    cfg = {"model": "some/base", "num_crops": 1, "target_format": fmt,
           "question": "Which product is this?"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if labels:
        (run / "labels.json").write_text(json.dumps({"categories": ["SHOES", "BELTS"],
                                                     "currency": "GBP"}))
    return run


def test_run_dir_gives_format_question_and_categories(model_dir: Path, tmp_path: Path,
                                                      photos: list[Image.Image]) -> None:
    run = _run_dir(tmp_path, model_dir)
    info = resolve_model(run)
    assert (info.weights, info.processor) == (str(run / "merged"), str(run / "processor"))
    p = Predictor.load(run, max_new_tokens=40)
    assert (p.target_format, p.question, p.categories) == ("json", "Which product is this?",
                                                           ["BELTS", "SHOES"])
    for pred in p.predict(photos[:3]):
        assert pred.raw.startswith("{") and json.loads(pred.raw)["category"] == pred.category
        assert pred.category in ("BELTS", "SHOES") and pred.currency == "GBP"


def test_run_dir_without_labels_leaves_category_free(model_dir: Path, tmp_path: Path,
                                                     photos: list[Image.Image]) -> None:
    p = Predictor.load(_run_dir(tmp_path, model_dir, "seed", labels=False), max_new_tokens=40)
    assert p.categories is None
    for pred in p.predict(photos[:3]):
        assert pred.ok, pred.raw


def test_adapter_run_dir_equals_its_merged_model(model_dir: Path, tmp_path: Path,
                                                 photos: list[Image.Image]) -> None:
    """A LoRA run dir (adapter/ only) answers exactly like the same adapter merged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # LoRA B starts at zero: make the adapter matter
    adapter_run, merged_run = tmp_path / "lora", tmp_path / "merged"
    peft.save_pretrained(adapter_run / "adapter")
    (adapter_run / "config.yaml").write_text(yaml.safe_dump({"model": str(model_dir)}))
    peft.merge_and_unload().save_pretrained(merged_run)
    shutil.copytree(model_dir, merged_run / "processor")

    info = resolve_model(adapter_run)
    assert info.adapter == adapter_run / "adapter" and info.weights == str(model_dir)
    kw = {"max_new_tokens": 16, "constrained": False}
    via_adapter = Predictor.load(adapter_run, **kw).predict(photos[:3])
    via_merged = Predictor.load(merged_run, **kw).predict(photos[:3])
    plain = Predictor.load(model_dir, **kw).predict(photos[:3])
    assert [p.raw for p in via_adapter] == [p.raw for p in via_merged]
    assert [p.raw for p in via_adapter] != [p.raw for p in plain]


def test_bad_model_arguments(tmp_path: Path) -> None:
    with pytest.raises(ProductVLMError, match="model folder not found"):
        resolve_model(tmp_path / "nothere")
    with pytest.raises(ProductVLMError, match="model folder not found"):
        resolve_model("runs/demo/train-typo")
    with pytest.raises(ProductVLMError, match="no model here"):
        resolve_model(tmp_path)
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ProductVLMError, match="config.yaml: unreadable YAML"):
        resolve_model(tmp_path)
    assert resolve_model("someorg/some-model").weights == "someorg/some-model"  # a Hub id


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "productvlm.cli", "predict", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_predict_cli_reports_a_bad_image_in_its_row(model_dir: Path, tmp_path: Path,
                                                    photos: list[Image.Image]) -> None:
    photos[0].save(tmp_path / "bag.jpg")
    photos[1].save(tmp_path / "scarf.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    run = _run_dir(tmp_path, model_dir, "seed")
    res = _cli("--model", str(run), "--json", "bag.jpg", "broken.jpg", "*.png", "gone.jpg",
               cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "2 of 4 images could not be read" in res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["image"] for r in rows] == ["bag.jpg", "broken.jpg", "scarf.png", "gone.jpg"]
    assert [r["ok"] for r in rows] == [True, False, True, False]
    assert rows[1]["error"] and rows[3]["error"] == "file not found"
    for r in (rows[0], rows[2]):
        assert r["category"] in ("BELTS", "SHOES") and r["price"] > 0 and r["currency"] == "GBP"
        assert parse_answer(r["raw"], "seed").ok



def test_predict_on_a_ray_pool_gives_the_same_rows_in_order(
        model_dir: Path, tmp_path: Path, photos: list[Image.Image],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from productvlm.predict import PredictConfig, predict_files

    pytest.importorskip("ray.data")
    names = []
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"p{i}.jpg")
        names.append(f"p{i}.jpg")
    names.insert(2, "gone.jpg")
    run = _run_dir(tmp_path, model_dir, "seed")
    monkeypatch.chdir(tmp_path)
    out = {}
    for ray in (None, "local"):
        code = predict_files(PredictConfig(model=str(run), images=names, json_lines=True,
                                           batch_size=2, max_new_tokens=24, ray=ray,
                                           ray_actors=2))
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert code == 1 and [r["image"] for r in rows] == names
        out[ray] = [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows]
    assert out["local"] == out[None]
    assert out[None][2]["error"] == "file not found"


def test_predict_table_and_local_root(model_dir: Path, tmp_path: Path,
                                      photos: list[Image.Image],
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from productvlm.predict import PredictConfig, predict_files

    photos[0].save(tmp_path / "bag.jpg")
    run = _run_dir(tmp_path, model_dir, "seed")
    monkeypatch.chdir(tmp_path)
    assert predict_files(PredictConfig(model=str(run), images=["bag.jpg"],
                                       max_new_tokens=24)) == 0
    out = capsys.readouterr().out
    assert "bag.jpg" in out and ("BELTS" in out or "SHOES" in out) and "GBP" in out
    # --local-root: a file outside it is refused in its row, not read
    code = predict_files(PredictConfig(model=str(run), images=["bag.jpg"], json_lines=True,
                                       local_root=run, max_new_tokens=24))
    row = json.loads(capsys.readouterr().out)
    assert code == 1 and row["error"] == "outside local root" and row["title"] is None


def test_predict_cli_missing_model_is_one_line(tmp_path: Path) -> None:
    res = _cli("--model", "no/such/run", "x.jpg", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "no/such/run: model folder not found" in res.stderr
