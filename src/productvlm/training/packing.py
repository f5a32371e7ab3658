"""Padding-free training batches: the rows of a batch packed into one sequence.

A padded batch computes every layer on its padding (at num_crops 16 a Phi-3-vision batch of
8 is ~10% padding) and its attention on a rectangle. A packed batch is the rows' real tokens
one after another in a single row, with position ids that restart at 0 for each sample and no
attention mask: transformers then reads the sample boundaries off the position ids
(``masking_utils.find_packed_sequence_indices``) and gives each sample its own causal block,
so no sample attends to another. With a varlen kernel (flash-attention) or flex attention
only those blocks are computed; with SDPA or eager attention the mask is dense over the
whole packed row, which is correct (the tests run it) but costs more attention than the
padding saves, so ``packing: auto`` packs only with the kernels that skip the empty blocks.

What differs by family is only the positions (:class:`~productvlm.models.family.ModelFamily`):

* Qwen2.5-VL / Qwen3-VL use 3-D rope positions (time, height, width) for image tokens. They
  are computed per sample by the model's own ``get_rope_index`` on the padded batch, then
  packed, with the 1-D text positions on top (the 4-row form transformers' Qwen models take
  for packed input: row 0 for the mask, rows 1-3 for the rope);
* Phi-3-vision (ours) marks image k of a row with token id ``-k``: in the packed row the
  tags are renumbered so that the samples' images keep their order in ``pixel_values``.

Image tensors are unchanged: every family places image features in token order, which
packing keeps. Labels are the padded batch's, padding dropped: the answer and its end tokens,
and -100 on prompts, so no token is trained to predict the next sample's first.

>>> packed = pack(batch)  # doctest: +SKIP
>>> packed["input_ids"].shape, packed["position_ids"][0, :4]  # doctest: +SKIP
(torch.Size([1, 412]), tensor([0, 1, 2, 3]))
"""

from __future__ import annotations

from typing import Any

import torch

from productvlm.errors import ProductVLMError
from productvlm.models.families import family_of, unwrap

#: the attention implementations that compute only the blocks of a packed row's samples
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")


def packing_pays(attn_implementation: str) -> bool:
    """Whether ``packing: auto`` packs with this attention (see the module's docstring).

    >>> packing_pays("sdpa"), packing_pays("flex_attention")
    (False, True)
    """
    return attn_implementation in VARLEN_ATTENTION or "flash" in attn_implementation


def pack(batch: dict[str, Any], rope_positions: torch.Tensor | None = None,
         numbered_image_tags: bool = False) -> dict[str, Any]:
    """A right-padded batch (the collator's) as one packed row.

    ``rope_positions``: the padded batch's multimodal positions, (3, rows, width) (Qwen's
    ``get_rope_index``); ``numbered_image_tags``: image k of a row is token id ``-k``
    (Phi-3-vision), renumbered across the packed row.

    >>> b = {"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0]]),
    ...      "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
    ...      "labels": torch.tensor([[-100, 6, -100], [-100, -100, -100]])}
    >>> p = pack(b)
    >>> p["input_ids"].tolist(), p["position_ids"].tolist(), "attention_mask" in p
    ([[5, 6, 7]], [[0, 1, 0]], False)
    """
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(dim=1)
    width = mask.shape[1]
    if not bool((mask == (torch.arange(width, device=mask.device) < lengths[:, None])).all()):
        raise ProductVLMError("packing needs right-padded rows (the collator's)")
    out = {k: v for k, v in batch.items() if k != "attention_mask"}
    for key, value in batch.items():
        if key != "attention_mask" and isinstance(value, torch.Tensor) and value.dim() == 2 \
                and value.shape == mask.shape:
            out[key] = value[mask].unsqueeze(0)
    if numbered_image_tags:
        out["input_ids"] = _renumber_tags(batch["input_ids"], lengths).unsqueeze(0)
    starts = torch.cumsum(lengths, 0) - lengths
    text = torch.arange(int(lengths.sum()), device=mask.device) - torch.repeat_interleave(
        starts, lengths)
    if rope_positions is None:
        out["position_ids"] = text.unsqueeze(0)
    else:
        rope = rope_positions[:, mask].to(text.device)  # (3, tokens)
        out["position_ids"] = torch.cat([text.unsqueeze(0), rope]).unsqueeze(1)
    # transformers reads the samples' boundaries off the positions only without a KV cache
    out["use_cache"] = False
    return out


def _renumber_tags(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The rows' real tokens in one row, image tag ``-k`` of a row whose earlier rows hold
    ``n`` images becoming ``-(k + n)``."""
    rows, before = [], 0
    for row, n in zip(ids, lengths.tolist(), strict=True):
        real = row[:n]
        tags = real < 0
        rows.append(torch.where(tags, real - before, real))
        if bool(tags.any()):
            before += int(-real.min())
    return torch.cat(rows)


class Packer:
    """Packs the batches of one model (its family says how); what the Trainer's loss step
    calls (see :mod:`productvlm.training.trainer`).

    >>> packer = Packer(model); loss = model(**packer(batch)).loss  # doctest: +SKIP
    """

    def __init__(self, model: Any) -> None:
        base = unwrap(model)
        fam = family_of(base)
        self.numbered_image_tags = fam.numbered_image_tags
        self.rope_index = base.get_submodule(fam.rope_index) if fam.rope_index else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rope = None
        if self.rope_index is not None:
            args = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw",
                                          "second_per_grid_ts", "mm_token_type_ids")
                    if batch.get(k) is not None}
            with torch.no_grad():
                rope, _ = self.rope_index.get_rope_index(
                    batch["input_ids"], attention_mask=batch["attention_mask"], **args)
        return pack(batch, rope, self.numbered_image_tags)


def tokens_per_step(batch: dict[str, Any]) -> tuple[int, int]:
    """(real tokens, computed tokens padded) of a collated batch: what packing saves.

    >>> tokens_per_step({"attention_mask": torch.tensor([[1, 1], [1, 0]])})
    (3, 4)
    """
    mask = batch["attention_mask"]
    return int(mask.sum()), int(mask.numel())


__all__ = ["Packer", "VARLEN_ATTENTION", "pack", "packing_pays", "tokens_per_step"]
