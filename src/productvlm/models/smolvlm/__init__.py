"""SmolVLM / SmolVLM2 (transformers' Idefics3 and SmolVLM classes) as one family:
:data:`SMOLVLM`."""

from __future__ import annotations

from .family import SMOLVLM

__all__ = ["SMOLVLM"]
