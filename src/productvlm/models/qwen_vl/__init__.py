"""Qwen2.5-VL and Qwen3-VL (transformers' own classes) as one family: :data:`QWEN_VL`."""

from __future__ import annotations

from .family import QWEN_VL

__all__ = ["QWEN_VL"]
