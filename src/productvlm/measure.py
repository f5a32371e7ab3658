"""What the Predictor measures about each answer besides its text (see calibration.py).

* the price distribution: every candidate price is written into the answer the model gave
  (its title and category, the target format), tokenized on its own as the collator tokenizes
  a target, and scored after the shared prefix in one packed pass (a token tree) on the
  generation's KV cache (:func:`productvlm.models.scoring.score_continuations`); the scores
  run through the decimal point, so "1,290." and "12,900." compete as whole numbers;
* the answer's log-probability: the mean, over the generated title and category tokens, of
  the log-probability the model gave the token it chose (raw logits, before the constraint);
* the image features: the mean of the image side's output tokens for the photo, caught on
  the way through the first forward pass.

>>> with ImageFeatures(model) as feats:  # doctest: +SKIP
...     out = model.generate(**batch, return_dict_in_generate=True, output_logits=True)
>>> signals = measure_batch(model, tokenizer, batch, out, texts, fmt, grid, feats.pooled)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from productvlm.calibration import Signals
from productvlm.models.scoring import score_continuations
from productvlm.prompts import END, ProductFields, TargetFormat, format_answer, parse_answer


class ImageFeatures:
    """Catches the pooled image features of a forward pass (a hook on the image side).

    >>> with ImageFeatures(model) as feats:  # doctest: +SKIP
    ...     model.generate(**batch)
    >>> feats.pooled.shape  # doctest: +SKIP
    (16, 3072)
    """

    def __init__(self, model: Any) -> None:
        self.module = next(m for name, m in model.named_modules()
                           if name.endswith("vision_embed_tokens"))
        self.pooled: np.ndarray | None = None
        self._handle: Any = None

    def _hook(self, module: Any, args: Any, output: Sequence[torch.Tensor]) -> None:
        if self.pooled is None:  # the first pass (the prompt); later steps have no images
            self.pooled = torch.stack([t.float().mean(0) for t in output]).cpu().numpy()

    def __enter__(self) -> ImageFeatures:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _base(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def answer_logprobs(logits: Sequence[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """log p of each generated token under the raw (unconstrained) logits: rows x steps."""
    steps = torch.stack(list(logits), 1).float()  # rows x steps x vocab
    return steps.log_softmax(-1).gather(-1, new[..., None].to(steps.device))[..., 0].cpu()


def measure_batch(model: Any, tokenizer: Any, prompt_ids: torch.Tensor,
                  prompt_mask: torch.Tensor, out: Any, texts: list[str], fmt: TargetFormat,
                  grid: Sequence[float] | None, features: np.ndarray | None) -> list[Signals]:
    """One :class:`Signals` per row of a generated batch (``out`` from generate with
    ``return_dict_in_generate`` and ``output_logits``; ``texts`` the answers, cut)."""
    rows, width = prompt_ids.shape
    new = out.sequences[:, width:]
    lps = answer_logprobs(out.logits, new)
    signals = [Signals(features=None if features is None else features[b]) for b in range(rows)]
    end_id = tokenizer.convert_tokens_to_ids(END)
    keep = torch.zeros(rows, out.cache.get_seq_length(), dtype=torch.bool,
                       device=prompt_mask.device)
    keep[:, :width] = prompt_mask.bool()
    lead, candidates, scored = [], [], []
    for b, text in enumerate(texts):
        parsed = parse_answer(text, fmt)
        generated = new[b].tolist()
        title_end = len(generated)
        if parsed.title and parsed.category and grid:
            fields = [ProductFields(parsed.title, parsed.category, p) for p in grid]
            targets = [format_answer(f, fmt) + END for f in fields]
            ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
            shared = _common_prefix(ids)
            matched = _common_prefix([ids[0][:shared], generated])
            keep[b, width:width + matched] = True
            last = out.sequences[b, :width + matched][keep[b, :width + matched]][-1].item()
            lead.append([last] + ids[0][matched:shared])
            candidates.append([_through_point(c[shared:], tokenizer, end_id) for c in ids])
            scored.append(b)
            title_end = matched
        else:  # nothing to score: a dummy candidate keeps the batch's shape
            lead.append([out.sequences[b, width - 1].item()])
            candidates.append([[end_id]])
        stop = next((i for i, t in enumerate(generated) if t == end_id), len(generated))
        span = lps[b, :max(1, min(title_end, stop))]
        signals[b].answer_logprob = float(span.mean())
    if scored:
        got = score_continuations(_base(model), out.cache, keep, candidates, lead)
        for b in scored:
            signals[b].price_logprobs = got[b].numpy().astype(np.float64)
    return signals


def _through_point(tokens: list[int], tokenizer: Any, end_id: int) -> list[int]:
    """A candidate's tokens up to the one holding its decimal point ("2,290." of
    "2,290.00"), else through ``<|end|>``. The point closes the integer part, so "33." and
    "330." compete as wholes; the cents after it are the same for every catalog price in
    practice, and skipping them halves the tokens scored."""
    pieces = tokenizer.convert_ids_to_tokens(tokens)
    for i, piece in enumerate(pieces):
        if "." in piece:
            return tokens[:i + 1]
        if tokens[i] == end_id:
            return tokens[:i + 1]
    return tokens


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n
