"""The decode path of a :class:`~productvlm.inference.Predictor`: the processor's tensors
for a batch of photos, batched greedy generation (constrained to the answer format by
:mod:`productvlm.constrained`, measured by :mod:`productvlm.measure` with a price grid) and
the answers' texts cut at their end token.

>>> texts, signals = predictor.generate(photos)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from productvlm.answer import DEFAULT_SCHEMA, AnswerSchema, FieldDomain, TargetFormat
from productvlm.calibration import Signals
from productvlm.errors import ProductVLMError
from productvlm.prompts import answer_end, render_prompt, stop_token_ids

#: a constrained title's length cap: the longest training title's, with this much slack for a
#: new product's longer name; TITLE_MAX_CHARS where the run does not say
TITLE_SLACK, TITLE_MAX_CHARS = 1.2, 120


class GenerateMixin:
    """Generation for a :class:`~productvlm.inference.Predictor` (mixed into it; it reads
    the attributes its ``__init__`` sets and keeps ``last_ids``, the cut rows, the tokens
    generated and the time spent masking logits)."""

    @property
    def grammar(self) -> Any:
        """The answer-format automaton over this tokenizer (built once, on first use)."""
        if self._grammar is None:
            from productvlm.constrained import AnswerGrammar, TokenVocab

            self._grammar = AnswerGrammar.within(TokenVocab.from_tokenizer(self.tokenizer),
                                                 self.answer_format(), self.max_new_tokens)
        return self._grammar

    def answer_format(self) -> tuple[Any, ...]:
        """This predictor's constrained answer (:func:`answer_format`)."""
        return answer_format(self.target_format, self.categories, self.title_alphabet,
                             self.title_max_chars, self.schema, self.domains)

    def encode(self, images: Sequence[Any]) -> Any:
        """The processor's tensors (on the CPU) of one batch of photos with the prompt: the
        CPU work of a batch, which the batch engine does for the next batch while the model
        answers this one (:func:`productvlm.inference.batch.answer_batches`)."""
        if self._encoder is None:
            # a copy of its own: a fast tokenizer used from two threads at once (this one, and
            # the model's thread decoding answers) can fail with "Already borrowed"
            self._encoder = copy.deepcopy(self.processor)
        prompt = render_prompt(self._encoder.tokenizer, self.question)
        return self._encoder(text=[prompt] * len(images), images=[[im] for im in images],
                             return_tensors="pt", padding=True, padding_side="left")

    def _inputs(self, batch: Any) -> dict[str, Any]:
        device = self.model.device
        dtype = next(self.model.parameters()).dtype
        from productvlm.models.families import family_of

        pixels = family_of(self.model).pixels
        return {k: v.to(device, dtype=dtype) if k == pixels else v.to(device)
                for k, v in batch.items()}

    def generate(self, images: Sequence[Any], grid: Sequence[float] | None = None,
                 given: Sequence[tuple[str, str] | None] | None = None,
                 answer_prices: bool = True, encoded: Any = None,
                 ) -> tuple[list[str], list[Signals | None]]:
        """Raw answer texts (up to ``<|end|>``) for one batch of images and, with a price
        ``grid`` (the calibration's candidate prices), what :mod:`productvlm.measure` measures
        of each answer (and, per ``given`` (title, category), of the catalog's listing)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if not images:
            return [], []
        tok = self.tokenizer
        batch = self._inputs(encoded if encoded is not None else self.encode(images))
        processors = LogitsProcessorList()
        if self.constrained:
            try:
                processors.append(self.grammar.logits_processor(self.max_new_tokens))
            except ValueError as e:
                raise ProductVLMError(f"constrained decoding: {e}") from None
        measure = grid is not None
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False,
                                  num_beams=1, use_cache=True,
                                  eos_token_id=stop_token_ids(tok), pad_token_id=self._pad_id(),
                                  return_dict_in_generate=True,
                                  output_logits=measure,
                                  cache_implementation=None if self.cache == "dynamic"
                                  else self.cache)
        from productvlm.measure import ImageFeatures, measure_batch

        feats = (ImageFeatures(self.model, batch["input_ids"]) if measure
                 else contextlib.nullcontext())
        with feats, torch.inference_mode():
            out = self.model.generate(**batch, generation_config=config,
                                      logits_processor=processors)
        self.constraint_seconds += sum(getattr(p, "seconds", 0.0) for p in processors)
        texts = self._answer_texts(out.sequences[:, batch["input_ids"].shape[1]:].tolist())
        if not measure:
            return texts, [None] * len(texts)
        signals = measure_batch(self.model, tok, batch["input_ids"], batch["attention_mask"], out,
                                texts, self.target_format, self._price_candidates(grid),
                                feats.pooled, given, answer_prices)
        return texts, list(signals)

    def _answer_texts(self, new: list[list[int]]) -> list[str]:
        """The answers' texts (cut at the end token) from their ids, each row ending at its
        stop token (then padding) or cut at ``max_new_tokens``; keeps the rows' ids
        (``last_ids``), which were cut, and the tokens generated."""
        tok = self.tokenizer
        stops, end = stop_token_ids(tok), answer_end(tok)
        self._cut_rows, self.last_ids = set(), []
        for b, row in enumerate(new):  # a finished row is padded after its stop token
            ended = next((i + 1 for i, t in enumerate(row) if t in stops), None)
            self.tokens_generated += ended or len(row)
            self.last_ids.append(row[:ended] if ended else row)
            if ended is None:
                self._cut_rows.add(b)
        texts = tok.batch_decode(new, skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
        return [_cut(t, [end, tok.eos_token or end, tok.pad_token or end]) for t in texts]

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else stop_token_ids(tok)[-1]

    def _price_candidates(self, grid: Sequence[float]) -> Any:
        """:class:`productvlm.measure.PriceCandidates` for ``grid`` (kept while it is the
        same grid)."""
        from productvlm.measure import PriceCandidates

        if self._candidates is None or self._candidates.grid != list(grid):
            self._candidates = PriceCandidates(self.tokenizer, self.target_format, grid)
        return self._candidates


def answer_format(target_format: TargetFormat, categories: Sequence[str] | None,
                  title_alphabet: str | None, title_max_chars: int | None,
                  schema: AnswerSchema = DEFAULT_SCHEMA,
                  domains: Mapping[str, FieldDomain] | None = None) -> tuple[Any, ...]:
    """The constrained answer's segments (:func:`productvlm.constrained.answer_template`):
    the target format, the training categories, the title bounded by the training titles'
    characters and longest length (with slack), then ``schema``'s extra fields bounded by
    what training saw of each (``domains``: a label among its labels, a text as the title).

    >>> answer_format("seed", ["BAGS"], None, None)[3]
    Lit(options=('BAGS',))
    """
    from productvlm.constrained import answer_template

    longest = (math.ceil(title_max_chars * TITLE_SLACK) if title_max_chars
               else TITLE_MAX_CHARS)
    domains = domains or {}
    extras = [(f, _slack(domains.get(f.name) or FieldDomain())) for f in schema.extras]
    return answer_template(target_format, sorted(set(categories)) if categories else None,
                           title_max_chars=longest, title_alphabet=title_alphabet,
                           extras=extras, schema=schema)


def _slack(domain: FieldDomain) -> FieldDomain:
    """A text field's longest training length with the title's slack (0: the default cap)."""
    longest = math.ceil(domain.max_chars * TITLE_SLACK) if domain.max_chars else 0
    return FieldDomain(domain.labels, domain.alphabet, longest)


def _cut(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop and (at := text.find(stop)) != -1:
            text = text[:at]
    return text.strip()

