"""Phi-3-vision processor: prompts with ``<|image_k|>`` tags + images -> model inputs, batched.

It reproduces the reference processor token for token (each text chunk between image tags is
tokenized with its own ``<s>``; image k's positions hold ``-k``, one per image token) and adds
what the reference lacks: a batch of prompts, each with its own images of any size, padded
left (generation) or right (training), and optional training labels.

Contract with the model: ``pixel_values`` / ``image_sizes`` list every image of the batch in
row order, then in tag order k = 1..n within the row.

>>> proc = Phi3VProcessor.from_pretrained(hub_folder, num_crops=4)  # doctest: +SKIP
>>> batch = proc(text=["<|user|>\\n<|image_1|>\\nWhat is this?<|end|>\\n<|assistant|>\\n"],
...              images=[[photo]], padding_side="left")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from productvlm.errors import ProductVLMError
from productvlm.models.phi3v.image_processing import Phi3VImageProcessor, to_pil_rgb

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
_SPLIT = re.compile(r"<\|image_\d+\|>")
IGNORE_INDEX = -100
# Hub download options forwarded to the tokenizer and image processor loaders.
_HUB_KEYS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
_IMAGE_KEYS = ("num_img_tokens", "crop_size", "image_mean", "image_std")


class Phi3VProcessor(ProcessorMixin):
    """Tokenizer + :class:`Phi3VImageProcessor`, batched; see the module docstring."""

    def __init__(
        self, image_processor: Phi3VImageProcessor, tokenizer: Any, chat_template: str | None = None
    ) -> None:
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike, num_crops: int | None = None,
        **kwargs: Any,
    ) -> Phi3VProcessor:
        """Load from a folder or Hub id: tokenizer files, plus preprocessor_config.json when
        present (else the reference defaults). ``num_crops`` overrides the file's value.

        The tokenizer is always ``tokenizer.json`` taken verbatim: transformers 5's
        ``AutoTokenizer`` maps the Hub's ``LlamaTokenizer`` to a class that rebuilds the
        pre-tokenizer and encodes ``"\\n"`` differently from the reference.

        >>> proc = Phi3VProcessor.from_pretrained("path/to/hub", num_crops=4)  # doctest: +SKIP
        """
        path = str(pretrained_model_name_or_path)
        hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
        overrides = {k: kwargs.pop(k) for k in _IMAGE_KEYS if k in kwargs}
        if num_crops is not None:
            overrides["num_crops"] = num_crops
        # whatever else AutoProcessor passes (trust_remote_code, _from_auto, ...) is moot here:
        # no remote code is ever run.
        tokenizer = TokenizersBackend.from_pretrained(path, **hub)
        try:
            image_processor = Phi3VImageProcessor.from_pretrained(path, **hub, **overrides)
        except OSError:
            if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
                raise  # present but unreadable: say so rather than use defaults
            image_processor = Phi3VImageProcessor(**overrides)
        return cls(image_processor, tokenizer)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write the Hub's layout: tokenizer files, preprocessor_config.json and a small
        processor_config.json naming the processor class (as Phi-3.5-vision's repo does)."""
        out = str(save_directory)
        os.makedirs(out, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(out))
        # "PreTrainedTokenizerFast" loads tokenizer.json verbatim in transformers 4 and 5 alike
        tok_cfg = os.path.join(out, "tokenizer_config.json")
        with open(tok_cfg, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg.pop("processor_class", None)
        cfg.pop("auto_map", None)
        with open(tok_cfg, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
        image_cfg = self.image_processor.to_dict()
        image_cfg["processor_class"] = type(self).__name__
        files.append(os.path.join(out, "preprocessor_config.json"))
        with open(files[-1], "w", encoding="utf-8") as f:
            json.dump(image_cfg, f, indent=2, sort_keys=True)
        files.append(os.path.join(out, "processor_config.json"))
        with open(files[-1], "w", encoding="utf-8") as f:
            json.dump({"processor_class": type(self).__name__}, f, indent=2)
        return files

    # ---------------------------------------------------------------- helpers
    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    def num_image_tokens(self, image_size: tuple[int, int] | Image.Image) -> int:
        """Image tokens for a raw image given as a PIL image or its (width, height).

        >>> proc.num_image_tokens((800, 1000))  # num_crops 16  # doctest: +SKIP
        2509
        """
        return self.image_processor.num_image_tokens(image_size)

    # The Hub processor's names for the two above, which vLLM's Phi-3-vision calls: with them
    # vLLM takes this processor in-process (docs/vllm.md).
    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        """:meth:`num_image_tokens` of a ``width`` x ``height`` image."""
        return self.num_image_tokens((width, height))

    @property
    def img_tokens(self) -> ImageTags:
        """Image k's tag in a prompt, ``img_tokens[k - 1]`` (``<|image_k|>``)."""
        return ImageTags()

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """The tokenizer's ``decode``."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]

    # ---------------------------------------------------------------- the call
    def __call__(  # type: ignore[override]
        self,
        text: str | list[str],
        images: Any = None,
        *,
        targets: list[str] | None = None,
        padding_side: str | None = None,
        padding: bool | str = True,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Tokenize prompts with their images into one padded batch.

        Args:
            text: one prompt or a list of prompts; image k of a prompt is the tag
                ``<|image_k|>``, tags numbered 1..n in order, each once.
            images: for a list of prompts, one list of images per prompt (``[]`` for none);
                for a single prompt, its list of images (or one image).
            targets: optional answer per prompt, for training: each is tokenized without
                special tokens and appended after its prompt; ``labels`` then holds the
                answer ids and -100 on the prompt, image positions and padding.
            padding_side: "left" (generation) or "right" (training); default the tokenizer's.
            padding: accepted for compatibility; rows are always padded to the longest.
                There is no truncation: an image's tokens cannot be cut, so length limits
                belong to the caller (e.g. the training collator).
            return_tensors: "pt" (default) or "np".

        Returns: ``input_ids`` (image k's positions hold -k), ``attention_mask``, and when
        any images were given ``pixel_values`` (images x (num_crops+1) x 3 x c x c) and
        ``image_sizes`` (images x 2, padded height and width); ``labels`` with ``targets``.
        """
        prompts, rows = _normalise_inputs(text, images)
        if targets is not None and len(targets) != len(prompts):
            raise ProductVLMError(f"got {len(targets)} targets for {len(prompts)} prompts")
        side = padding_side or self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise ProductVLMError(f"padding_side must be 'left' or 'right', got {side!r}")
        if return_tensors not in ("pt", "np", None):
            raise ProductVLMError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")

        flat_images: list[Image.Image] = []
        for r, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
            _check_tags(r, prompt, len(row))
            flat_images += [to_pil_rgb(im, f"prompt {r}, image {k}") for k, im in
                            enumerate(row, start=1)]

        data: dict[str, Any] = {}
        tokens_per_image: list[int] = []
        if flat_images:
            vision = self.image_processor(flat_images)
            data["pixel_values"] = vision["pixel_values"]
            data["image_sizes"] = vision["image_sizes"]
            tokens_per_image = vision["num_img_tokens"]

        # Every text chunk of every prompt in one tokenizer call (the Rust side batches).
        chunks = [_SPLIT.split(p) for p in prompts]
        encoded = iter(self.tokenizer([c for cs in chunks for c in cs])["input_ids"])
        target_ids = (self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
                      if targets is not None else None)

        seqs, n_prompt = [], []
        counts = iter(tokens_per_image)
        for r, cs in enumerate(chunks):
            ids: list[int] = list(next(encoded))
            for k in range(1, len(cs)):  # chunk k follows image tag k
                ids += [-k] * next(counts)
                ids += next(encoded)
            n_prompt.append(len(ids))
            if target_ids is not None:
                ids += target_ids[r]
            seqs.append(ids)

        data.update(self._pad(seqs, n_prompt, side, with_labels=target_ids is not None))
        if return_tensors == "np":
            data = {k: v.numpy() for k, v in data.items()}
        return BatchFeature(data=data)

    def _pad(
        self, seqs: list[list[int]], n_prompt: list[int], side: str, with_labels: bool
    ) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        if pad_id is None:
            raise ProductVLMError("the tokenizer has neither a pad nor an eos token to pad with")
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        for i, (s, n) in enumerate(zip(seqs, n_prompt, strict=True)):
            start = width - len(s) if side == "left" else 0
            row = torch.tensor(s, dtype=torch.long)
            input_ids[i, start:start + len(s)] = row
            attention[i, start:start + len(s)] = 1
            labels[i, start + n:start + len(s)] = row[n:]
        out = {"input_ids": input_ids, "attention_mask": attention}
        if with_labels:
            out["labels"] = labels
        return out


class ImageTags:
    """The image tags ``<|image_1|>``, ``<|image_2|>``, ... by index, as the Hub processor's
    ``img_tokens`` list holds them.

    >>> ImageTags()[0]
    '<|image_1|>'
    """

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):  # the first n tags: [:n]
            if i.stop is None or i.step not in (None, 1):
                raise IndexError("ImageTags slices are [start:stop]")
            return [self[k] for k in range(i.start or 0, i.stop)]
        if not isinstance(i, int) or i < 0:
            raise IndexError(i)
        return f"<|image_{i + 1}|>"


def _is_image_like(x: Any) -> bool:
    return isinstance(x, Image.Image | np.ndarray | torch.Tensor)


def _normalise_inputs(text: Any, images: Any) -> tuple[list[str], list[list[Any]]]:
    """(prompts, one image list per prompt) from the single-prompt or batch call forms."""
    if isinstance(text, str):
        if images is None:
            return [text], [[]]
        return [text], [[images] if _is_image_like(images) else list(images)]
    if not isinstance(text, list | tuple) or not all(isinstance(t, str) for t in text):
        raise ProductVLMError("text must be a prompt string or a list of prompt strings")
    prompts = list(text)
    if not prompts:
        raise ProductVLMError("text is an empty list: give at least one prompt")
    if images is None:
        return prompts, [[] for _ in prompts]
    if _is_image_like(images) or not isinstance(images, list | tuple):
        images = [images]
    images = list(images)
    if len(prompts) == 1 and images and not all(isinstance(x, list | tuple) for x in images):
        images = [images]  # one prompt with a flat list of images, the reference's form
    if len(images) != len(prompts) or not all(isinstance(x, list | tuple) for x in images):
        raise ProductVLMError(
            f"for {len(prompts)} prompts pass images as {len(prompts)} lists, one per prompt "
            "(an empty list for a prompt without images)"
        )
    return prompts, [list(x) for x in images]


def _check_tags(row: int, prompt: str, n_images: int) -> None:
    """Tags must read <|image_1|> .. <|image_n|>, each once, in order, n = images given."""
    tags = [int(t) for t in IMAGE_TAG.findall(prompt)]
    if tags != list(range(1, len(tags) + 1)):
        found = ", ".join(f"<|image_{t}|>" for t in tags)
        raise ProductVLMError(
            f"prompt {row}: image tags must be <|image_1|> .. <|image_n|>, each once and in "
            f"order; found {found}"
        )
    if len(tags) != n_images:
        if not tags:
            raise ProductVLMError(
                f"prompt {row}: {n_images} image(s) given but the prompt has no <|image_1|> tag; "
                "add one tag per image where the image belongs"
            )
        raise ProductVLMError(
            f"prompt {row}: {len(tags)} image tag(s) but {n_images} image(s) given"
        )
