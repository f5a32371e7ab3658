"""Shared fixtures: the Phi-3-vision conformance kit, when ../shared is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from several threads, and OpenMP threads spinning against each
# other (two CPU cores, subprocess tests, parallel jobs) slow a step down tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which it reads at import)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "phi3v-conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """../shared/phi3v-conformance (hub/, hub-3.5/, tiny/); skips the test where absent."""
    if not (CONFORMANCE / "tiny" / "cases.json").is_file():
        pytest.skip(f"Phi-3-vision conformance kit not found at {CONFORMANCE}")
    return CONFORMANCE


def _calibrated_run(root: Path, family: str = "phi3v") -> dict[str, Path]:
    """A run directory with a tiny random model of ``family`` and a real calibration/, fitted
    on a prepared synth catalog; plus a second synth catalog with wrong listed prices and
    broken rows to audit. Random weights are enough: every piece of the path runs, at its
    real shapes.

    Keys: run, prepared, audit_catalog (its faults.csv beside the catalog files).
    """
    import yaml

    from productvlm.answer import ProductFields, format_answer
    from productvlm.catalog.prepare import prepare
    from productvlm.evaluation.calibrate import fit_calibration
    from productvlm.inference import Predictor
    from productvlm.models.phi3v.tiny import save_tiny_model, tiny_config
    from productvlm.models.tiny_families import save_tiny_family
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer
    from productvlm.prepared import load_prepared
    from productvlm.rundir import RunDir
    from productvlm.synth.generate import synth

    cat = synth(root / "catalog", n=90, seed=3, max_side=160, workers=1).out
    prepared = root / "prepared"
    prepare(str(cat / "catalog.parquet"), prepared, val_fraction=0.2, test_fraction=0.15,
            progress=False, verbose=False)
    ds = load_prepared(prepared, splits=("train", "validation", "test"))
    train = ds["train"].remove_columns("image")
    texts = [format_answer(ProductFields(r["title"], r["category"], r["price"]))
             for r in train]
    run = RunDir(root / "run")
    if family == "phi3v":
        tok = train_tiny_tokenizer(texts * 3, vocab_size=400)
        cfg = tiny_config(len(tok), hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id,
                          vision={"hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "image_size": 112})
        save_tiny_model(run.merged, config=cfg, tokenizer=tok, num_crops=1)
    else:
        save_tiny_family(family, run.merged, texts * 3, vocab_size=400, hidden_size=64,
                         layers=2, vision_hidden=32, vision_layers=2)
    run.config.write_text(yaml.safe_dump({"target_format": "seed", "num_crops": 1}))
    run.write_labels(list(set(train["category"])), "USD", list(train["title"]))
    run.write_training_items(list(train["product_code"]), list(train["image_sha256"]),
                             list(train["title"]))
    predictor = Predictor.load(run.root, batch_size=8, max_new_tokens=48)
    fit_calibration(predictor, ds["train"], ds["validation"]).save(run.calibration)
    audit_cat = synth(root / "audit-catalog", n=40, seed=4, max_side=160, workers=1,
                      fault_rate=0.1, mispricing_rate=0.15).out
    return {"run": run.root, "prepared": prepared, "audit_catalog": audit_cat}


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A calibrated tiny Phi-3-vision run and an audit catalog (see _calibrated_run)."""
    return _calibrated_run(tmp_path_factory.mktemp("calibrated"))


@pytest.fixture(scope="session", params=["qwen2_5_vl", "smolvlm", "phi4mm"])
def family_run(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same for each transformers family; key ``family`` names it."""
    run = _calibrated_run(tmp_path_factory.mktemp(f"calibrated-{request.param}"), request.param)
    return {**run, "family": Path(request.param)}
