"""The one place that writes prompts and wraps answers in a family's chat template.

The answer's own text (its fields, the target format, the parser) is
:mod:`productvlm.answer`'s; this module puts the question and the photo in the chat
template, finds where an answer starts and ends, and renders a training target around an
answer. Training, evaluation, prediction and serving all go through these functions.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any

QUESTION = "What is shown in this image?"
IMAGE_TAG = "<|image_1|>"
END = "<|end|>"  # Phi-3's; a family's own is :func:`answer_end`


def title_words(title: str) -> list[str]:
    """The words of a title, lower-cased: the vision warm-up's tags, and the vocabulary an
    audit checks a listing's title against.

    >>> title_words("Medium Pink Check Tote")
    ['medium', 'pink', 'check', 'tote']
    """
    return title.lower().split()


def build_messages(question: str = QUESTION, answer: str | None = None,
                   structured: bool = False) -> list[dict[str, Any]]:
    """Chat messages for one photo: the user turn holds the image and the question.

    Phi-3's template takes the ``<|image_1|>`` tag in the text; ``structured`` writes the
    content as parts (``{"type": "image"}``, ``{"type": "text"}``), as Qwen's and SmolVLM's
    templates want.
    """
    if structured:
        messages: list[dict[str, Any]] = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": question}]}]
        if answer is not None:
            messages.append({"role": "assistant",
                             "content": [{"type": "text", "text": answer}]})
        return messages
    messages = [{"role": "user", "content": f"{IMAGE_TAG}\n{question}"}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def structured_chat(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s chat template takes content parts (Qwen, SmolVLM) rather than
    Phi-3's text with an image tag: what load_processor set from the family table, else
    whether the template reads a part's ``'type'``."""
    said = getattr(tokenizer, "structured_chat", None)
    if said is not None:
        return bool(said)
    return "'type'" in str(getattr(tokenizer, "chat_template", None) or "")


def render_prompt(tokenizer: Any, question: str = QUESTION) -> str:
    """The prompt text up to where the answer starts, via the chat template.

    >>> render_prompt(tok)  # doctest: +SKIP
    '<|user|>\\n<|image_1|>\\nWhat is shown in this image?<|end|>\\n<|assistant|>\\n'
    """
    return tokenizer.apply_chat_template(
        build_messages(question, structured=structured_chat(tokenizer)), tokenize=False,
        add_generation_prompt=True
    )


@dataclass(frozen=True)
class ChatParts:
    """What the chat template writes around an answer: ``lead`` between the prompt and the
    answer (SmolVLM's space after "Assistant:"), ``end`` the special token that closes the
    turn (``<|end|>``, ``<|im_end|>``, ``<end_of_utterance>``) and ``tail`` all it writes
    after the answer, then EOS where the turn's end is not EOS."""

    lead: str
    end: str
    tail: str


_PROBE = "Product: X"
# chat_parts per tokenizer, kept while the tokenizer lives (nothing is set on the tokenizer)
_CHAT_PARTS: weakref.WeakKeyDictionary[Any, ChatParts] = weakref.WeakKeyDictionary()


def chat_parts(tokenizer: Any) -> ChatParts:
    """Read :class:`ChatParts` off ``tokenizer``'s chat template (once per tokenizer).

    >>> chat_parts(tok)  # doctest: +SKIP
    ChatParts(lead='', end='<|end|>', tail='<|end|>\\n<|endoftext|>')
    """
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be a weak key: no cache
        if (cached := _CHAT_PARTS.get(tokenizer)) is not None:
            return cached
    if not getattr(tokenizer, "chat_template", None):
        return _phi3_parts(tokenizer)  # a bare tokenizer (tests, tools): Phi-3's conventions
    structured = structured_chat(tokenizer)
    prompt = render_prompt(tokenizer)
    full = tokenizer.apply_chat_template(build_messages(QUESTION, _PROBE, structured),
                                         tokenize=False)
    at = full.find(_PROBE, len(prompt) if full.startswith(prompt) else 0)
    if not full.startswith(prompt) or at == -1:
        raise ValueError("the chat template does not write the answer after the generation "
                         "prompt; productvlm cannot tell where an answer starts")
    lead, after = full[len(prompt):at], full[at + len(_PROBE):]
    specials = sorted(set(getattr(tokenizer, "all_special_tokens", [])) |
                      {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()},
                      key=len, reverse=True)
    end = next((t for t in specials if after.lstrip().startswith(t)), None)
    if end is None:
        raise ValueError(f"the chat template closes an answer with {after!r}, which does not "
                         "start with a special token")
    eos = getattr(tokenizer, "eos_token", None)
    tail = after if not eos or eos in after else after + eos
    parts = ChatParts(lead, end, tail)
    with contextlib.suppress(TypeError):
        _CHAT_PARTS[tokenizer] = parts
    return parts


def _phi3_parts(tokenizer: Any) -> ChatParts:
    eos = getattr(tokenizer, "eos_token", None) or "<|endoftext|>"
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    known = convert(END) if callable(convert) else None
    end = END if known is not None and known != getattr(tokenizer, "unk_token_id", None) else eos
    return ChatParts("", end, f"{END}\n{eos}")


def answer_end(tokenizer: Any) -> str:
    """The special token that ends an answer: generation stops there.

    >>> answer_end(tok)  # doctest: +SKIP
    '<|end|>'
    """
    return chat_parts(tokenizer).end


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids generation stops at: the answer's end token, then EOS (once each; what the
    hf engine's ``generate`` and vLLM's structured output both end an answer with).

    >>> stop_token_ids(tok)  # doctest: +SKIP
    [32007, 32000]
    """
    end_id = tokenizer.convert_tokens_to_ids(answer_end(tokenizer))
    return list(dict.fromkeys(i for i in (end_id, tokenizer.eos_token_id)
                              if i is not None and i != tokenizer.unk_token_id))


def render_target(answer: str, tokenizer: Any) -> str:
    """The text the model is trained to produce after the prompt: the template's lead, the
    answer, the turn's end and EOS (``answer<|end|>\\n<|endoftext|>`` for Phi-3).

    Training on the end tokens is what makes a fine-tuned model stop talking.
    """
    parts = chat_parts(tokenizer)
    return f"{parts.lead}{answer}{parts.tail}"
