"""productvlm: fine-tune a vision-language model (Phi-3-vision by default; Qwen2.5-VL,
Qwen3-VL, SmolVLM and Phi-4-multimodal too) to read a product photo and answer with its
title, category and price, with calibrated trust and a catalog audit."""

__version__ = "0.1.0"
