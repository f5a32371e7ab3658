"""Every token's surface string, sorted for prefix and suffix lookups by the grammar.

>>> TokenVocab.from_tokenizer(tok).surfaces[tok.convert_tokens_to_ids("▁Price:")]  # doctest: +SKIP
' Price:'
"""

from __future__ import annotations

import bisect
from functools import cache
from typing import Any

import numpy as np

from productvlm.constrained.template import Free
from productvlm.prompts import answer_end


class TokenVocab:
    """Each token's surface string, computed once; None for special and partial-byte tokens."""

    def __init__(self, surfaces: list[str | None], end_id: int, stop_ids: tuple[int, ...]) -> None:
        self.surfaces = surfaces
        self.end_id = end_id
        self.stop_ids = stop_ids  # tokens a finished row may produce (end, EOS, pad)
        self.by_surface: dict[str, list[int]] = {}
        for i, s in enumerate(surfaces):
            if s:
                self.by_surface.setdefault(s, []).append(i)
        self.ids = np.array([i for i, s in enumerate(surfaces) if s], dtype=np.int64)
        self.ids = self.ids[np.argsort([surfaces[i] for i in self.ids], kind="stable")]
        self.sorted = [surfaces[i] for i in self.ids]
        rev = sorted((s[::-1], i) for i, s in enumerate(surfaces) if s)
        self.rev_sorted = [r for r, _ in rev]
        self.rev_ids = np.array([i for _, i in rev], dtype=np.int64)
        self.lengths = np.array([len(s) if s else 0 for s in surfaces], dtype=np.int64)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenVocab:
        """Surfaces by decoding ``[anchor, t]`` minus ``[anchor]``: that keeps the leading
        space of "▁word" pieces, which decoding ``[t]`` alone strips."""
        n = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
        kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        head = tokenizer.decode([anchor], **kw)
        pairs = tokenizer.batch_decode([[anchor, t] for t in range(n)], **kw)
        surfaces: list[str | None] = []
        for t, text in enumerate(pairs):
            ok = t not in special and text.startswith(head) and len(text) > len(head)
            surf = text[len(head):] if ok else None
            surfaces.append(None if surf is None or "\ufffd" in surf else surf)
        end_id = tokenizer.convert_tokens_to_ids(answer_end(tokenizer))
        if end_id is None or end_id == tokenizer.unk_token_id:
            end_id = tokenizer.eos_token_id
        stops = {end_id, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        return cls(surfaces, end_id, tuple(sorted(stops)))

    def startswith(self, prefix: str) -> np.ndarray:
        """Ids of tokens whose surface starts with ``prefix`` and is longer than it."""
        lo = bisect.bisect_right(self.sorted, prefix)
        hi = bisect.bisect_left(self.sorted, prefix + "\U0010ffff")
        return self.ids[lo:hi]

    def endswith(self, suffix: str) -> np.ndarray:
        """Ids of tokens whose surface ends with ``suffix`` (equal included)."""
        r = suffix[::-1]
        lo = bisect.bisect_left(self.rev_sorted, r)
        hi = bisect.bisect_left(self.rev_sorted, r + "\U0010ffff")
        return self.rev_ids[lo:hi]

    @cache  # noqa: B019 - one vocab per predictor, a handful of classes
    def class_runs(self, seg: Free) -> tuple[np.ndarray, np.ndarray]:
        """Per token, the length of its longest prefix and suffix made of ``seg``'s characters."""
        head = np.zeros(len(self.surfaces), dtype=np.int64)
        tail = np.zeros(len(self.surfaces), dtype=np.int64)
        for i, s in enumerate(self.surfaces):
            if not s:
                continue
            bad = [j for j, c in enumerate(s) if not seg.ok(c)]
            head[i] = bad[0] if bad else len(s)
            tail[i] = len(s) - 1 - bad[-1] if bad else len(s)
        return head, tail
