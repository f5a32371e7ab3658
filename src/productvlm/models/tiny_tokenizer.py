"""A small tokenizer trained on a catalog's own text, with Phi-3's special tokens.

The CPU demo trains a tiny Phi-3-vision from scratch; the real 32,064-token vocabulary
would make its embedding and output layers most of its parameters and slow every step.
This tokenizer keeps the pieces that matter for the code path: `<s>` added at the start of
every encoded chunk (as Phi-3's does), `<|user|>`, `<|assistant|>`, `<|end|>`,
`<|endoftext|>` as special tokens, Phi-3's chat template, digits split one by one (prices
are then learnable digit by digit) and SentencePiece-style "▁" word boundaries.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>",
                  "<|end|>", "<|user|>"]

# Phi-3-vision's template, verbatim in behaviour: "<|role|>\ncontent<|end|>\n" per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content']"
    " + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != "
    "'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    """A family's special tokens and chat template, for a tiny tokenizer of that family."""

    special: tuple[str, ...] = tuple(SPECIAL_TOKENS)
    bos: str | None = "<s>"  # added at the start of every encoded chunk (None: nothing)
    eos: str = "<|endoftext|>"
    pad: str = "<|endoftext|>"
    additional: tuple[str, ...] = ("<|system|>", "<|end|>", "<|user|>", "<|assistant|>")
    chat_template: str = CHAT_TEMPLATE
    # special tokens a processor reads by name (``tokenizer.image_token``): (name, token)
    named: tuple[tuple[str, str], ...] = ()


PHI3 = TokenizerSpec()


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024,
                         spec: TokenizerSpec = PHI3) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts`` and wrap it like Phi-3's (or ``spec``'s family).

    >>> tok = train_tiny_tokenizer(["Medium Lola Bag", "Check Cotton Trench Coat"], 300)
    >>> tok.convert_ids_to_tokens(tok("Lola").input_ids)[0]
    '<s>'
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
         pre_tokenizers.Digits(individual_digits=True)]
    )
    # Phi-3's (Llama's) own decoder: "▁" back to a space, byte pieces fused, the first space
    # stripped. It decodes as Metaspace(prepend_scheme="first") does, and it is how grammar
    # engines (vLLM's xgrammar) tell a SentencePiece-style vocabulary from a raw one.
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", *dict.fromkeys(t for t in spec.special if t != "<unk>")],
        # every printable ASCII character stays encodable even if the catalog lacks it
        initial_alphabet=list(string.printable.strip()) + ["▁", "\n"],
        show_progress=False,
    )
    tok.train_from_iterator(_with_template_text(texts), trainer=trainer)
    if spec.bos is not None:
        bos = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, bos)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token="<unk>",
        additional_special_tokens=list(spec.additional),
        padding_side="right",
        clean_up_tokenization_spaces=False,
        **({"extra_special_tokens": dict(spec.named)} if spec.named else {}),
    )
    fast.chat_template = spec.chat_template
    return fast


def _with_template_text(texts: Iterable[str]) -> Iterable[str]:
    # The prompt's and answer's fixed words belong in the vocabulary as whole pieces.
    yield from ["What is shown in this image?", "Product: , Category: , Full Price: ",
                '{"title": "", "category": "", "price": }'] * 50
    yield from texts
