"""Shared fixtures: the Phi-3-vision conformance kit, when ../shared is present."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "phi3v-conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """../shared/phi3v-conformance (hub/, hub-3.5/, tiny/); skips the test where absent."""
    if not (CONFORMANCE / "tiny" / "cases.json").is_file():
        pytest.skip(f"Phi-3-vision conformance kit not found at {CONFORMANCE}")
    return CONFORMANCE
