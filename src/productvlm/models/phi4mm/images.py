"""Phi-4-multimodal's image processor without torchvision.

transformers ships ``Phi4MultimodalImageProcessor`` on its torchvision backend only, and
torchvision does not import beside the CPU torch wheel. This is the same processing on
transformers' PIL backend (:class:`PilBackend` reads the photo; the arithmetic is torch's
own ``interpolate``, the kernels torchvision's resize calls on CPU tensors):

1. the photo is resized, keeping its aspect ratio, to fill a grid of ``size`` crops (as many
   as it covers, at most ``dynamic_hd``; past that the grid whose ratio is nearest) and padded
   white to the grid, right and bottom;
2. it is scaled to [-1, 1]; a global view is the whole padded grid resized to one crop
   (bicubic, no antialias);
3. the crops row by row follow the global view; a mask per crop marks the patches that are
   photo, not padding; every photo in a batch is padded with empty crops (mask all ones) to
   the batch's most crops;
4. ``num_img_tokens``: the global view's pooled patches with a separator after each row,
   one separator, then the crops' real pooled patches with a separator per row.

:func:`processor_class` is transformers' own ``Phi4MultimodalProcessor`` that loads it (with
torchvision installed too: the same processing wherever a run trains or serves); it saves as
``Phi4MultimodalImageProcessor`` (the PIL backend drops its ``Pil`` suffix), so a folder it
writes is the Hub format, which transformers' torchvision class loads.

Token count: transformers' processor writes the global view's share as 256 + 16 (crops of
448 px and 14-px patches, pooled 2 x 2 into 16 x 16, the only size a Phi-4 checkpoint has);
here it is computed from ``size`` and ``patch_size``, the same number at 448 / 14 and the
right one for the tiny models tests build.

>>> images = Phi4MultimodalImageProcessorPil(dynamic_hd=4)
>>> out = images([Image.new("RGB", (900, 500))], return_tensors="pt")  # doctest: +SKIP
>>> out["image_pixel_values"].shape, out["num_img_tokens"]  # doctest: +SKIP
(torch.Size([1, 3, 3, 448, 448]), [753])
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs


class Phi4MultimodalImageKwargs(ImagesKwargs, total=False):
    """``patch_size``: the vision tower's patch side; ``dynamic_hd``: most crops a photo."""

    patch_size: int
    dynamic_hd: int


def crop_grid(width: int, height: int, crop: int, most: int) -> tuple[int, int]:
    """(columns, rows) of ``crop``-px crops a ``width`` x ``height`` photo is fitted to.

    >>> crop_grid(900, 500, 448, 36), crop_grid(900, 500, 448, 4)
    ((3, 2), (2, 1))
    """
    cols, rows = math.ceil(width / crop), math.ceil(height / crop)
    if cols * rows <= most:
        return cols, rows
    ratio = width / height
    grids = sorted({(i, j) for n in range(1, most + 1) for i in range(1, n + 1)
                    for j in range(1, n + 1) if 1 <= i * j <= most}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for i, j in grids:  # the nearest ratio; a tie goes to a larger grid the photo half fills
        diff = abs(ratio - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and width * height > 0.5 * crop * crop * i * j:
            best = (i, j)
    return best


class Phi4MultimodalImageProcessorPil(PilBackend):
    """Phi-4-multimodal's dynamic-HD crops (see the module docstring)."""

    resample = PILImageResampling.BICUBIC
    size = {"height": 448, "width": 448}
    patch_size = 14
    dynamic_hd = 36
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    valid_kwargs = Phi4MultimodalImageKwargs
    model_input_names = ["image_pixel_values", "image_sizes", "image_attention_mask"]

    def _fit(self, image: torch.Tensor, crop: int, patch: int,
             most: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The photo resized into its crop grid and padded white; the patch mask."""
        height, width = image.shape[-2:]
        cols, rows = crop_grid(width, height, crop, most)
        grid_w, grid_h = crop * cols, crop * rows
        if grid_w / width < grid_h / height:
            new_w, new_h = grid_w, int(height * grid_w / width)
        else:
            new_w, new_h = int(width * grid_h / height), grid_h
        if min(new_w, new_h) < 10:
            raise ValueError(f"a {width}x{height} photo is too elongated for {crop}-px crops")
        resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        padded = F.pad(resized, (0, grid_w - new_w, 0, grid_h - new_h), value=255)
        side = crop // patch
        mask = torch.ones(side * rows, side * cols)
        if grid_w - new_w >= patch:
            mask[:, -((grid_w - new_w) // patch):] = 0
        if grid_h - new_h >= patch:
            mask[-((grid_h - new_h) // patch):, :] = 0
        return padded, mask

    def _preprocess(self, images: list[np.ndarray], size: SizeDict, resample: Any,
                    do_rescale: bool, rescale_factor: float, do_normalize: bool,
                    image_mean: Any, image_std: Any, patch_size: int, dynamic_hd: int,
                    return_tensors: Any = None, **kwargs: Any) -> BatchFeature:
        if size.height != size.width:
            raise ValueError("Phi-4-multimodal crops are square: size needs height == width")
        crop = size.height
        side = crop // patch_size
        pooled = side // 2 + side % 2  # patches per side after the 2 x 2 pooling
        mean = torch.tensor(image_mean if do_normalize else [0.0] * 3).view(3, 1, 1)
        std = torch.tensor(image_std if do_normalize else [1.0] * 3).view(3, 1, 1)
        views, masks, tokens, sizes = [], [], [], []
        for array in images:
            padded, mask = self._fit(torch.from_numpy(np.ascontiguousarray(array)), crop,
                                     patch_size, dynamic_hd)
            pixels = padded.float() * (rescale_factor if do_rescale else 1.0)
            pixels = (pixels - mean) / std
            whole = F.interpolate(pixels[None], size=(crop, crop), mode="bicubic",
                                  align_corners=False, antialias=False)
            height, width = pixels.shape[-2:]
            rows, cols = height // crop, width // crop
            crops = pixels.view(3, rows, crop, cols, crop).permute(1, 3, 0, 2, 4)
            crops = crops.reshape(rows * cols, 3, crop, crop)
            crop_masks = mask.view(rows, side, cols, side).transpose(1, 2).reshape(-1, side, side)
            views.append(torch.cat([whole, crops]))
            masks.append(torch.cat([torch.ones(1, side, side), crop_masks]))
            # real pooled patches of the crops laid out as one grid, and its rows
            kept = crop_masks[:, 0::2, 0::2].reshape(rows, cols, pooled, pooled)
            kept = kept.transpose(1, 2).reshape(rows * pooled, cols * pooled)
            tokens.append(pooled * (pooled + 1) + 1 + int(kept.sum()) + int(kept[:, 0].sum()))
            sizes.append([height, width])
        most = max(v.shape[0] for v in views)
        views = [F.pad(v, (0, 0, 0, 0, 0, 0, 0, most - v.shape[0])) for v in views]
        masks = [F.pad(m, (0, 0, 0, 0, 0, most - m.shape[0]), value=1.0) for m in masks]
        data = {"image_pixel_values": torch.stack(views), "image_sizes": torch.tensor(sizes),
                "image_attention_mask": torch.stack(masks), "num_img_tokens": tokens}
        return BatchFeature(data=data, tensor_type=return_tensors)


#: ``from_pretrained`` arguments that say where the files are; every part reads them alike
HUB_ARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


@cache
def processor_class() -> type:
    """transformers' ``Phi4MultimodalProcessor`` with this image processor.

    Always this one, torchvision or not: a run then reads photos the same way on the machine
    that trains it (often a GPU one with torchvision) and on the one that serves it (often a
    CPU one without), and a tiny model's token count is right. The class keeps its name and
    its ``save_pretrained``, so a folder it writes is the Hub format.

    Its ``from_pretrained`` builds the processor from its parts through public calls only:
    the tokenizer (``AutoTokenizer``), the speech feature extractor, this image processor and
    the chat template (``get_processor_dict``), then the constructor. transformers' own
    ``from_pretrained`` cannot take a ready image processor on every 5.x release (5.24 loads
    each part itself through a private hook, which 5.25 removed), and the constructor can.

    >>> processor_class().from_pretrained("microsoft/Phi-4-multimodal-instruct")  # doctest: +SKIP
    """
    from transformers import AutoTokenizer, Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor

    def from_pretrained(klass: type, path: Any, **kwargs: Any) -> Any:
        unknown = sorted(set(kwargs) - set(HUB_ARGS))
        if unknown:
            raise TypeError(f"Phi4MultimodalProcessor.from_pretrained: unexpected {unknown}; "
                            "set image sizes on the loaded processor's image_processor")
        saved, _ = klass.get_processor_dict(path, **kwargs)
        images = Phi4MultimodalImageProcessorPil.from_pretrained(path, **kwargs)
        audio = Phi4MultimodalFeatureExtractor.from_pretrained(path, **kwargs)
        return klass(image_processor=images, audio_processor=audio,
                     tokenizer=AutoTokenizer.from_pretrained(path, **kwargs),
                     chat_template=saved.get("chat_template"))

    return type("Phi4MultimodalProcessor", (Phi4MultimodalProcessor,), {
        "from_pretrained": classmethod(from_pretrained),
        "__module__": Phi4MultimodalProcessor.__module__,
        "__qualname__": Phi4MultimodalProcessor.__qualname__})


__all__ = ["Phi4MultimodalImageProcessorPil", "crop_grid", "processor_class"]
