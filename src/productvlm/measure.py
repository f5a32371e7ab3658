"""What the Predictor measures about each answer besides its text (see calibration/).

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

from productvlm.answer import ProductFields, TargetFormat, format_answer, parse_answer
from productvlm.calibration import Signals
from productvlm.models.compat import output_cache
from productvlm.models.families import family_of, image_token_id, unwrap
from productvlm.models.scoring import score_continuations
from productvlm.prompts import answer_end, chat_parts

#: Candidate prices whose first PROBE_TOKENS tokens are already PRUNE_NATS below the best
#: beginning (probability under e^-9, 1/8,000) are not followed further (see scoring.py).
PRUNE_NATS = 9.0
PROBE_TOKENS = 3


class ImageFeatures:
    """Catches the pooled image features of a forward pass: the mean of the image tokens the
    decoder reads for each photo.

    Phi-3-vision: a hook on its image side (``vision_embed_tokens``), whose output is the
    tokens of each image. The transformers families: a hook on the decoder's input, the
    embeddings with the image features already in place, read at the image-token positions
    of ``input_ids`` (Phi-4-multimodal's decoder takes ids: there the hook is on the module
    that writes those embeddings, ``embed_tokens_extend``).

    >>> with ImageFeatures(model, batch["input_ids"]) as feats:  # doctest: +SKIP
    ...     model.generate(**batch)
    >>> feats.pooled.shape  # doctest: +SKIP
    (16, 3072)
    """

    def __init__(self, model: Any, input_ids: torch.Tensor | None = None) -> None:
        self.model = unwrap(model)
        self.family = family_of(self.model)
        self.module, self.tap = self.family.feature_tap(self.model)
        if self.tap != "images":
            if input_ids is None:
                raise ValueError("ImageFeatures needs the batch's input_ids for this family")
            self.image_mask = input_ids == image_token_id(self.model.config)
        self.pooled: np.ndarray | None = None
        self._handle: Any = None

    def _hook(self, module: Any, args: Any, output: Sequence[torch.Tensor]) -> None:
        if self.pooled is None:  # the first pass (the prompt); later steps have no images
            self.pooled = torch.stack([t.float().mean(0) for t in output]).cpu().numpy()

    def _pre_hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._read(kwargs.get("inputs_embeds"))

    def _embeds_hook(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self._read(output)

    def _read(self, embeds: torch.Tensor | None) -> None:
        if self.pooled is not None or embeds is None or embeds.shape[1] != self.image_mask.shape[1]:
            return  # not the prompt's pass
        mask = self.image_mask.to(embeds.device)[..., None].float()
        pooled = (embeds.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        self.pooled = pooled.cpu().numpy()

    def run(self, batch: dict[str, Any]) -> None:
        """The least forward that reaches the features (Phi-3: the image side alone; the
        others: one forward of the prompt)."""
        self.family.run_image_side(self.model, batch)

    def __enter__(self) -> ImageFeatures:
        if self.tap == "images":
            self._handle = self.module.register_forward_hook(self._hook)
        elif self.tap == "output":
            self._handle = self.module.register_forward_hook(self._embeds_hook)
        else:
            self._handle = self.module.register_forward_pre_hook(self._pre_hook,
                                                                 with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def forced_pass(model: Any, batch: dict[str, Any], answers: Sequence[Sequence[int]],
                pad_id: int) -> tuple[Any, np.ndarray | None]:
    """One forward pass over each prompt (``batch``, left-padded) followed by a given answer
    (its token ids, the stop token included), standing in for ``generate``'s output:
    ``(out, pooled image features)`` where ``out`` has what :func:`measure_batch` reads
    (``sequences``: prompt + answer, right-padded with ``pad_id``; ``logits``: per answer
    step, the logits that chose its token; ``cache``). This measures answers another engine
    wrote (vLLM) the way the hf engine measures its own.

    Positions follow ``generate``'s: from the attention mask (left padding), or the family's
    multimodal rope index where it has one (Qwen).
    """
    from types import SimpleNamespace

    longest = max((len(a) for a in answers), default=0) or 1
    rows, width = batch["input_ids"].shape
    device = batch["input_ids"].device
    tail = torch.full((rows, longest), pad_id, dtype=batch["input_ids"].dtype, device=device)
    seen = torch.zeros((rows, longest), dtype=batch["attention_mask"].dtype, device=device)
    for b, ids in enumerate(answers):
        tail[b, :len(ids)] = torch.tensor(list(ids), dtype=tail.dtype)
        seen[b, :len(ids)] = 1
    inputs = dict(batch)
    for key, value in batch.items():  # per-token inputs (Qwen's mm_token_type_ids): text
        if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor) \
                and value.shape[:2] == (rows, width):
            inputs[key] = torch.cat([value, value.new_zeros((rows, longest))], 1)
    inputs["input_ids"] = torch.cat([batch["input_ids"], tail], 1)
    inputs["attention_mask"] = torch.cat([batch["attention_mask"], seen], 1)
    if not family_of(unwrap(model)).rope_index:
        position = inputs["attention_mask"].long().cumsum(-1) - 1
        inputs["position_ids"] = position.masked_fill(inputs["attention_mask"] == 0, 1)
    with ImageFeatures(model, inputs["input_ids"]) as feats, torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=longest + 1)
    steps = out.logits[:, :longest].float()  # position width-1+t chose answer token t
    return SimpleNamespace(sequences=inputs["input_ids"], logits=steps.unbind(1),
                           cache=output_cache(out)), feats.pooled


def answer_logprobs(logits: Sequence[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """log p of each generated token under the raw (unconstrained) logits: rows x steps."""
    steps = torch.stack(list(logits), 1).float()  # rows x steps x vocab
    return steps.log_softmax(-1).gather(-1, new[..., None].to(steps.device))[..., 0].cpu()


class PriceCandidates:
    """The grid's prices written into an answer with a given title and category, tokenized as
    the collator tokenizes a target: the shared prefix and each price's own tokens.

    Tokenizing the whole grid for every photo costs more than a quarter of the measuring on
    a small model, and the tokens after the shared prefix (the price's "word") do not depend
    on the title for tokenizers that split at spaces. So the tokens of one title are kept,
    and for a new title only the cheapest and the dearest price are tokenized to check that
    theirs end the same way; otherwise the whole grid is tokenized for it.
    """

    def __init__(self, tokenizer: Any, fmt: TargetFormat, grid: Sequence[float]) -> None:
        self.tokenizer, self.fmt, self.grid = tokenizer, fmt, list(grid)
        parts = chat_parts(tokenizer)
        self.lead, self.end = parts.lead, parts.end
        self.end_id = tokenizer.convert_tokens_to_ids(parts.end)
        self._tails: list[list[int]] | None = None  # per price: tokens after the prefix
        self._cut_tails: list[list[int]] | None = None  # ... through the decimal point

    def _encode(self, title: str, category: str, prices: Sequence[float]) -> list[list[int]]:
        texts = [self.lead + format_answer(ProductFields(title, category, p), self.fmt) + self.end
                 for p in prices]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def ids(self, title: str, category: str) -> tuple[list[int], list[list[int]]]:
        """(shared prefix tokens, per grid price the tokens to score)."""
        if self._tails is not None and len(self.grid) > 1:
            lo, hi = self._encode(title, category, [self.grid[0], self.grid[-1]])
            t_lo, t_hi = self._tails[0], self._tails[-1]
            if (lo[len(lo) - len(t_lo):] == t_lo and hi[len(hi) - len(t_hi):] == t_hi
                    and lo[:len(lo) - len(t_lo)] == hi[:len(hi) - len(t_hi)]):
                assert self._cut_tails is not None
                return lo[:len(lo) - len(t_lo)], self._cut_tails
        full = self._encode(title, category, self.grid)
        shared = _common_prefix(full)
        tails = [ids[shared:] for ids in full]
        cut = [self._cut(t) for t in tails]
        if self._tails is None:
            self._tails, self._cut_tails = tails, cut
        return full[0][:shared], cut

    def _cut(self, tokens: list[int]) -> list[int]:
        return _through_point(tokens, self.tokenizer, self.end_id)


def measure_batch(model: Any, tokenizer: Any, prompt_ids: torch.Tensor,
                  prompt_mask: torch.Tensor, out: Any, texts: list[str], fmt: TargetFormat,
                  candidates: PriceCandidates | None, features: np.ndarray | None,
                  given: Sequence[tuple[str, str] | None] | None = None,
                  answer_prices: bool = True) -> list[Signals]:
    """One :class:`Signals` per row of a generated batch (``out`` from generate with
    ``return_dict_in_generate`` and ``output_logits``; ``texts`` the answers, cut).

    ``given``: per row, a (title, category) from the catalog; the prices are then also
    scored after "Product: <that title>, Category: <that category>, ..."
    (``Signals.given_logprobs``), what an audit compares a listed price with;
    ``answer_prices=False`` leaves out the prices after the model's own answer.
    """
    rows, width = prompt_ids.shape
    new = out.sequences[:, width:]
    lps = answer_logprobs(out.logits, new)
    signals = [Signals(features=None if features is None else features[b]) for b in range(rows)]
    end_id = tokenizer.convert_tokens_to_ids(answer_end(tokenizer))
    cache = output_cache(out)
    keep = torch.zeros(rows, cache.get_seq_length(), dtype=torch.bool,
                       device=prompt_mask.device)
    keep[:, :width] = prompt_mask.bool()
    groups: list[list[tuple[list[int], list[list[int]]]]] = []
    roles: list[list[str]] = []
    for b, text in enumerate(texts):
        parsed = parse_answer(text, fmt)
        generated = new[b].tolist()
        wanted: list[tuple[str, list[int], list[list[int]]]] = []
        if candidates is not None and answer_prices and parsed.title and parsed.category:
            wanted.append(("answer", *candidates.ids(parsed.title, parsed.category)))
        if candidates is not None and given is not None and given[b] is not None:
            wanted.append(("given", *candidates.ids(*given[b])))
        # the cache holds the generated tokens every wanted prefix starts with
        matched = min((_common_prefix([prefix, generated]) for _, prefix, _ in wanted),
                      default=0)
        keep[b, width:width + matched] = True
        root = out.sequences[b, :width + matched][keep[b, :width + matched]][-1].item()
        if wanted:
            groups.append([([root] + prefix[matched:], cands) for _, prefix, cands in wanted])
            roles.append([role for role, _, _ in wanted])
        else:  # nothing to score: a dummy candidate keeps the batch's shape
            groups.append([([root], [[end_id]])])
            roles.append([])
        title_end = len(generated)
        if parsed.title and parsed.category and candidates is not None:
            prefix = (wanted[0][1] if wanted and wanted[0][0] == "answer"
                      else candidates.ids(parsed.title, parsed.category)[0])
            title_end = _common_prefix([prefix, generated])
        stop = next((i for i, t in enumerate(generated) if t == end_id), len(generated))
        span = lps[b, :max(1, min(title_end, stop))]
        signals[b].answer_logprob = float(span.mean())
    if any(roles):
        got = score_continuations(unwrap(model), cache, keep, groups, prune=PRUNE_NATS,
                                  probe=PROBE_TOKENS)
        for b, row_roles in enumerate(roles):
            for role, logprobs in zip(row_roles, got[b], strict=False):
                value = logprobs.numpy().astype(np.float64)
                if role == "answer":
                    signals[b].price_logprobs = value
                else:
                    signals[b].given_logprobs = value
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
