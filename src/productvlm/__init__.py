"""productvlm: fine-tune Phi-3-vision to read a product photo and answer with its
title, category and price."""

__version__ = "0.1.0"
