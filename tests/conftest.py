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
