"""Constrained decoding: every generated answer is forced into the target format, so it parses.

The answer format is a sequence of segments (see :func:`answer_template`), for the seed format

    "Product: " <title> ", Category: " <one training category> ", Full Price: " <number> <|end|>

and a character-level NFA over that template decides which tokens may come next: a token is
allowed when the text so far plus the token's *surface string* stays consistent with the
template. Working on surface strings (not token ids) makes tokens that span a segment
boundary (" Med" after "Product:", "S," after "BAG") work, and works the same for
SentencePiece ("▁") and byte-level vocabularies.

Speed: the allowed-token mask depends only on a small key per NFA state (the literal prefix
typed so far; for free text only "empty?" and "over the cap?"), so masks are computed once,
mostly with vectorised numpy checks, and cached. Each distinct mask is a row of one table
kept on the model's device; a step costs one NFA advance per answer on the host, a row
number per answer sent to the device and one indexed gather + fill there (no mask crosses
per step). The host reads the step's new tokens to advance the NFA: on CUDA, transformers'
``generate`` (5.x) already waits for each step's tokens to decide whether to stop, so this
read adds no stall of its own; a decoder that never waits would need the whole automaton
(its transitions for every token of the vocabulary from each of the thousands of states
that free text's length cap and stop literal make) on the device; this one stays lazy.

Budget: every state knows the fewest tokens that can finish the answer (``need``); near the
end of ``max_new_tokens`` only tokens that still allow finishing in time are allowed, so even
a random model's answer ends with ``<|end|>`` and parses.

>>> grammar = AnswerGrammar(TokenVocab.from_tokenizer(tok), answer_template("seed", ["BAGS"]))
>>> model.generate(**inputs, logits_processor=[grammar.logits_processor(64)])  # doctest: +SKIP
"""

from productvlm.constrained.grammar import AnswerGrammar, AnswerLogitsProcessor
from productvlm.constrained.template import answer_template, template_regex
from productvlm.constrained.vocab import TokenVocab

__all__ = ["AnswerGrammar", "AnswerLogitsProcessor", "TokenVocab", "answer_template",
           "template_regex"]
