"""From catalog rows to training batches, in two pure steps (torchtune style).

1. :func:`row_to_example`: a prepared-dataset row -> prompt text, target text, image.
2. :class:`VLMCollator`: examples -> tensors, for every model family. The family's processor
   tokenizes the prompt (with its image placeholders); the target is tokenized on its own
   and appended, so the boundary between what the model reads and what it is trained to
   say is exact by construction.

Labels are -100 on the prompt, on image positions and on padding; the answer and its end
tokens (``<|end|>`` and EOS for Phi-3, ``<|im_end|>`` for Qwen, ``<end_of_utterance>`` for
SmolVLM: what the chat template writes, see ``prompts.chat_parts``) are trained, which is
what makes the model stop talking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from productvlm.answer import DEFAULT_SCHEMA, AnswerSchema, TargetFormat
from productvlm.errors import ProductVLMError
from productvlm.prompts import QUESTION, render_prompt, render_target

IGNORE_INDEX = -100
AUGMENT = "_augment"  # column marking rows whose photos may be augmented (the train split)


@dataclass
class Example:
    prompt: str
    target: str
    image: Any  # PIL.Image.Image


def row_to_example(
    row: dict[str, Any], tokenizer: Any, fmt: TargetFormat = "seed", question: str = QUESTION,
    schema: AnswerSchema = DEFAULT_SCHEMA,
) -> Example:
    """One prepared row -> the texts and image the model sees (the answer's fields from
    ``schema``).

    >>> ex = row_to_example({"title": "Lola Bag", "category": "BAGS", "price": 2290.0,
    ...                      "image": img}, tok)  # doctest: +SKIP
    >>> ex.target
    'Product: Lola Bag, Category: BAGS, Full Price: 2,290.00<|end|>\\n<|endoftext|>'
    """
    fields = schema.truth(row)
    image = row["image"]
    if getattr(image, "mode", "RGB") != "RGB":
        image = image.convert("RGB")
    return Example(
        prompt=render_prompt(tokenizer, question),
        target=render_target(schema.format(fields, fmt), tokenizer),
        image=image,
    )


def augment(image: Any, hflip: float, shift: float) -> Any:
    """Mirror (with chance ``hflip``) and move (up to ``shift`` of each side) a product photo.

    Only changes that keep every label true: a mirrored or moved bag is the same bag, of the
    same colour, and fills as much of the frame (the size words). Vacated pixels take the
    colour of the photo's corner, i.e. its background. torch's RNG drives it: the Trainer
    seeds it, and per loader worker.

    >>> augment(photo, hflip=0.5, shift=0.1).size == photo.size  # doctest: +SKIP
    True
    """
    from PIL import Image, ImageOps

    if hflip and torch.rand(()).item() < hflip:
        image = ImageOps.mirror(image)
    if shift:
        w, h = image.size
        dx, dy = ((torch.rand(2) * 2 - 1) * shift * torch.tensor([w, h])).round().int().tolist()
        if dx or dy:
            moved = Image.new("RGB", (w, h), image.getpixel((0, 0)))
            moved.paste(image, (dx, dy))
            image = moved
    return image


@dataclass
class VLMCollator:
    """Batches rows of any size and mixed image sizes into model inputs with labels, for
    every model family: the family's processor writes each prompt with its photo (image
    placeholders expanded, pixel tensors as that family wants them); the target is tokenized
    on its own and appended after each row's prompt, then rows are right-padded.

    >>> collate = VLMCollator(processor, max_length=2048)  # doctest: +SKIP
    >>> batch = collate([row0, row1])  # input_ids, attention_mask, labels, and the
    ...                                # family's image tensors (pixel_values, ...)
    """

    processor: Any
    target_format: TargetFormat = "seed"
    question: str = QUESTION
    max_length: int = 4096
    hflip: float = 0.0  # chance of mirroring a photo of a row marked AUGMENT (training rows)
    shift: float = 0.0  # largest move of such a photo, as a share of its width and height
    schema: AnswerSchema = DEFAULT_SCHEMA  # the answer's fields

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        examples = [row_to_example(r, tok, self.target_format, self.question, self.schema)
                    for r in rows]
        if self.hflip or self.shift:
            for row, ex in zip(rows, examples, strict=True):
                if row.get(AUGMENT):
                    ex.image = augment(ex.image, self.hflip, self.shift)
        batch = dict(self.processor(
            text=[e.prompt for e in examples],
            images=[[e.image] for e in examples],
            return_tensors="pt",
            padding=True,
            padding_side="right",
        ))
        targets = tok([e.target for e in examples], add_special_tokens=False)["input_ids"]
        batch.update(_append_targets(batch, targets, _pad_id(tok)))
        if batch["input_ids"].shape[1] > self.max_length:
            # right padding: cutting columns shortens answers, never the start of a prompt
            for key, value in batch.items():
                if _per_token(value, batch["labels"]):
                    batch[key] = value[:, : self.max_length]
            lost = (batch["labels"] != IGNORE_INDEX).sum(dim=1) == 0
            if lost.any():
                raise ProductVLMError(
                    f"max_length {self.max_length} leaves no answer token after the prompt and "
                    "its image; raise max_length or lower the image size (num_crops, "
                    "max_pixels, image_splitting)"
                )
        return batch


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ProductVLMError("the tokenizer has neither a pad nor an eos token to pad with")
    return int(pad)


def _per_token(value: Any, like: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == like.shape


def _append_targets(batch: dict[str, Any], targets: list[list[int]],
                    pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels and any other per-token tensor (Qwen's
    ``mm_token_type_ids``) with each row's target after its prompt, right-padded."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = {k: v for k, v in batch.items()
             if k not in ("input_ids", "attention_mask") and _per_token(v, ids)}
    lengths = mask.sum(dim=1).tolist()
    width = max(n + len(t) for n, t in zip(lengths, targets, strict=True))
    rows = len(targets)
    out = {"input_ids": torch.full((rows, width), pad_id, dtype=ids.dtype),
           "attention_mask": torch.zeros((rows, width), dtype=mask.dtype),
           "labels": torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)}
    out.update({k: torch.zeros((rows, width), dtype=v.dtype) for k, v in extra.items()})
    for i, (n, target) in enumerate(zip(lengths, targets, strict=True)):
        if mask[i, :n].sum() != n:
            raise ProductVLMError("the processor did not right-pad the prompts")
        answer = torch.tensor(target, dtype=ids.dtype)
        out["input_ids"][i, :n] = ids[i, :n]
        out["input_ids"][i, n:n + len(target)] = answer
        out["attention_mask"][i, :n + len(target)] = 1
        out["labels"][i, n:n + len(target)] = answer
        for k, v in extra.items():
            out[k][i, :n] = v[i, :n]
    return out
