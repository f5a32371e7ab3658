"""Phi-3-vision image preprocessing: the HD transform, written for throughput.

Each image becomes a grid of ``crop_size`` crops plus one global view, the reference's
"HD transform" (from InternLM-XComposer2-4KHD):

1. Portrait images are transposed so the long side is the width.
2. The widest grid of ``scale`` columns whose rows ``ceil(scale / aspect)`` fit in
   ``num_crops`` crops is chosen; the image is resized (PIL bilinear, antialiased) to a width
   of ``scale * crop_size``, keeping its aspect ratio, and its height padded with white,
   centred, to a multiple of ``crop_size``; portrait images are transposed back.
3. The padded image is normalised with the CLIP mean/std; the global view is its bicubic
   resize to ``crop_size`` x ``crop_size``; the crops follow row by row; the stack is
   zero-padded to ``num_crops + 1`` views so images of any shape batch together.

The geometry and the PIL resize are kept exactly as the reference's (rounding of 8-bit
intermediates included, which is why the transposes stay), the rest is vectorised torch:
one output tensor for the whole batch, written in place, no per-pixel Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ImagesKwargs

from productvlm.errors import ProductVLMError

# Keys of the Hub's preprocessor_config.json that describe remote code or the processor, not
# this class: kept out of the instance so save_pretrained never points at code we do not ship.
_DROPPED_KEYS = ("auto_map", "image_processor_type", "processor_class", "feature_extractor_type")


class Phi3VImageProcessorKwargs(ImagesKwargs, total=False):
    """Keys this processor accepts besides the standard image kwargs."""

    num_crops: int
    num_img_tokens: int


def hd_geometry(width: int, height: int, num_crops: int, crop_size: int = 336) -> dict[str, Any]:
    """Where an image of ``width`` x ``height`` lands in the HD crop grid.

    Returns the resize target in the (possibly transposed) working orientation, the padded
    size in the original orientation and the padding offset, as the reference computes them.

    >>> g = hd_geometry(800, 1000, num_crops=16)
    >>> g["padded_height"], g["padded_width"]
    (1344, 1344)
    """
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale = max(scale - 1, 1)
    new_w = scale * crop_size
    # int() truncation as in the reference; max(1) only guards absurd aspect ratios that
    # would make the reference crash on a zero-height resize.
    new_h = max(int(new_w / ratio), 1)
    padded_h = -(-new_h // crop_size) * crop_size
    top = (padded_h - new_h) // 2
    if transposed:
        return {"transposed": True, "resize": (new_w, new_h), "padded_height": new_w,
                "padded_width": padded_h, "offset": top}
    return {"transposed": False, "resize": (new_w, new_h), "padded_height": padded_h,
            "padded_width": new_w, "offset": top}


def image_token_count(
    padded_height: int, padded_width: int, crop_size: int = 336, num_img_tokens: int = 144
) -> int:
    """Image tokens for an image of padded size (h, w): ``(h*w + 1)*m*m + 1 + (h + 1)*m``.

    h, w count crops, m is the merged feature grid side (sqrt(num_img_tokens), 12 for the
    real model): each crop and the global view give m*m features, the global view and each
    crop row end with a separator, and one separator sits between the crops and the global view.

    >>> image_token_count(336, 336)
    313
    """
    m = math.isqrt(num_img_tokens)
    if m * m != num_img_tokens:
        raise ProductVLMError(f"num_img_tokens {num_img_tokens} is not a square (m*m) number")
    h, w = padded_height // crop_size, padded_width // crop_size
    return (h * w + 1) * m * m + 1 + (h + 1) * m


def to_pil_rgb(image: Any, where: str = "image") -> Image.Image:
    """A PIL RGB image from a PIL image or an HxW(x3/4) uint8 array; ValueError otherwise."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    ):
        return Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1
                               else image).convert("RGB")
    kind = type(image).__name__
    if isinstance(image, np.ndarray):
        kind = f"array of shape {image.shape} and dtype {image.dtype}"
    raise ProductVLMError(
        f"{where} is a {kind}, not an image; pass a PIL.Image or an HxWx3 uint8 array"
    )


class Phi3VImageProcessor(BaseImageProcessor):
    """Phi-3-vision's HD image transform; reads the Hub's preprocessor_config.json.

    ``crop_size`` (default 336) lets tiny configs use small crops on the same code path.

    >>> proc = Phi3VImageProcessor(num_crops=4)
    >>> out = proc([Image.new("RGB", (640, 480))])
    >>> tuple(out["pixel_values"].shape), out["image_sizes"].tolist(), out["num_img_tokens"]
    ((1, 5, 3, 336, 336), [[672, 672]], [757])
    """

    model_input_names = ["pixel_values", "image_sizes"]
    valid_kwargs = Phi3VImageProcessorKwargs

    def __init__(
        self,
        num_crops: int = 1,
        num_img_tokens: int = 144,
        crop_size: int | dict[str, int] = 336,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ) -> None:
        for key in _DROPPED_KEYS:
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        if isinstance(crop_size, dict):  # tolerate transformers' {"height": h, "width": w}
            crop_size = int(crop_size.get("height", crop_size.get("width", 336)))
        if int(num_crops) < 1:
            raise ProductVLMError(f"num_crops must be at least 1, got {num_crops}")
        self.num_crops = int(num_crops)
        self.num_img_tokens = int(num_img_tokens)
        self.crop_size = int(crop_size)
        self.image_mean = list(image_mean if image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = list(image_std if image_std is not None else OPENAI_CLIP_STD)
        self.do_convert_rgb = do_convert_rgb
        image_token_count(self.crop_size, self.crop_size, self.crop_size, self.num_img_tokens)

    def padded_size(self, width: int, height: int) -> tuple[int, int]:
        """(padded height, padded width) of a raw ``width`` x ``height`` image."""
        g = hd_geometry(width, height, self.num_crops, self.crop_size)
        return g["padded_height"], g["padded_width"]

    def num_image_tokens(self, image_size: tuple[int, int] | Image.Image) -> int:
        """Image tokens for a raw image, given as a PIL image or its (width, height).

        >>> Phi3VImageProcessor(num_crops=16).num_image_tokens((800, 1000))
        2509
        """
        width, height = image_size.size if isinstance(image_size, Image.Image) else image_size
        h, w = self.padded_size(width, height)
        return image_token_count(h, w, self.crop_size, self.num_img_tokens)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(
        self, images: Any, num_crops: int | None = None, return_tensors: str | None = "pt"
    ) -> BatchFeature:
        """Images -> ``pixel_values`` (n, num_crops+1, 3, c, c) float32, ``image_sizes``
        (n, 2) padded (height, width), and ``num_img_tokens`` (list of ints).

        ``num_crops`` overrides the configured value for this call only."""
        num_crops = self.num_crops if num_crops is None else int(num_crops)
        if isinstance(images, Image.Image | np.ndarray | torch.Tensor):
            images = [images]
        pils = [to_pil_rgb(im, f"image {i}") for i, im in enumerate(images)]
        c = self.crop_size
        geoms = [hd_geometry(*im.size, num_crops, c) for im in pils]
        pixel_values = torch.empty(len(pils), num_crops + 1, 3, c, c, dtype=torch.float32)
        # normalised = pixel * scale + shift, i.e. (pixel / 255 - mean) / std in one pass
        std = torch.tensor(self.image_std, dtype=torch.float32)
        scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        shift = (-torch.tensor(self.image_mean, dtype=torch.float32) / std).view(3, 1, 1)
        # one float work buffer for the whole call: fresh multi-MB allocations cost page faults
        largest = max((g["padded_height"] * g["padded_width"] for g in geoms), default=0)
        buffer = torch.empty(3 * largest, dtype=torch.float32)
        for i, (im, g) in enumerate(zip(pils, geoms, strict=True)):
            self._transform_one(im, g, pixel_values[i], buffer, scale, shift)
        sizes = [[g["padded_height"], g["padded_width"]] for g in geoms]
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes, dtype=torch.long).view(-1, 2),
            "num_img_tokens": [image_token_count(h, w, c, self.num_img_tokens) for h, w in sizes],
        }
        if return_tensors == "np":
            data["pixel_values"] = data["pixel_values"].numpy()
            data["image_sizes"] = data["image_sizes"].numpy()
        return BatchFeature(data=data)

    def _transform_one(
        self, im: Image.Image, g: dict[str, Any], out: torch.Tensor, buffer: torch.Tensor,
        scale: torch.Tensor, shift: torch.Tensor,
    ) -> None:
        """Write one image's global view and crops into ``out`` (num_crops+1, 3, c, c)."""
        c = self.crop_size
        # PIL resamples in two 8-bit passes (horizontal, then vertical), so resizing the
        # transposed image is not the transpose of resizing the original: follow the reference.
        if g["transposed"]:
            im = im.transpose(Image.Transpose.TRANSPOSE)
        resized = np.asarray(im.resize(g["resize"], Image.Resampling.BILINEAR))
        # HWC -> CHW as one uint8 copy (4x fewer bytes than doing it on floats); for portrait
        # images the transpose back to the original orientation comes free with it.
        order = (2, 1, 0) if g["transposed"] else (2, 0, 1)
        pixels = torch.from_numpy(np.ascontiguousarray(resized.transpose(order)))
        H, W = g["padded_height"], g["padded_width"]  # noqa: N806
        full = buffer[: 3 * H * W].view(3, H, W)  # raw 0..255 values, white padding
        o = g["offset"]
        if g["transposed"]:  # white padding left and right
            full[:, :, :o].fill_(255.0)
            full[:, :, o + pixels.shape[2]:].fill_(255.0)
            full[:, :, o:o + pixels.shape[2]].copy_(pixels)
        else:  # white padding top and bottom
            full[:, :o].fill_(255.0)
            full[:, o + pixels.shape[1]:].fill_(255.0)
            full[:, o:o + pixels.shape[1]].copy_(pixels)
        # Bicubic weights sum to one, so resizing the raw image and normalising the small
        # result equals the reference's resize of the normalised image (to float rounding).
        glob = F.interpolate(full[None], size=(c, c), mode="bicubic", align_corners=False)[0]
        torch.addcmul(shift, glob, scale, out=out[0])
        rows, cols = H // c, W // c
        n = rows * cols
        # (3, rows*c, cols*c) -> (rows, cols, 3, c, c), crops row-major, normalised on the way
        blocks = full.view(3, rows, c, cols, c).permute(1, 3, 0, 2, 4)
        torch.addcmul(shift, blocks, scale, out=out[1:1 + n].view(rows, cols, 3, c, c))
        out[1 + n:].zero_()
