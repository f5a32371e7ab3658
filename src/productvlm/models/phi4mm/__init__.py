"""Phi-4-multimodal (transformers' own classes, with our torchvision-free image processor)
as a family: :data:`PHI4MM`."""

from __future__ import annotations

from .family import PHI4MM

__all__ = ["PHI4MM"]
