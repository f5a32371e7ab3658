"""Phi-3-vision's image embedding: CLIP crops -> 2x2 merge -> separators -> MLP projection.

For one image padded to h x w crops (of ``crop_size`` pixels), the processor hands over the
global view (the whole image resized to one crop) followed by the h*w crops in row-major order.
Each crop goes through CLIP; the patch tokens of hidden state ``feature_layer`` (-2) form a
g x g grid (g = crop/patch = 24), merged 2x2 into an m x m grid of 4*C features (m = 12).

The crops are stitched into one (h*m) x (w*m) grid and a learnable ``sub_GN`` token closes
every row of it (and every row of the global grid), so the decoder sees the 2-D layout. In the
``sub_glb`` order of the released checkpoint the image becomes

    [crop grid rows + sub_GN] , glb_GN , [global grid rows + sub_GN]

i.e. ``h*m*(w*m+1) + 1 + m*(m+1)`` = ``(h*w+1)*m*m + 1 + (h+1)*m`` tokens, each projected by
Linear(4C, D) -> GELU -> Linear(D, D). Parameter names match the Hub checkpoint
(``img_processor``, ``glb_GN``, ``sub_GN``, ``img_projection.0/2``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings

from .configuration import Phi3VConfig


class CLIPVisionTower(nn.Module):
    """CLIP ViT laid out as the Hub checkpoint's ``img_processor.vision_model``.

    transformers' ``CLIPVisionModel`` no longer nests a ``vision_model`` and renames weights
    on load and save only when it was itself loaded from a file; a plain module with the
    Hub's layout keeps the names right whatever the model's history (fresh, LoRA-merged, ...).
    """

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPImageProcessor(nn.Module):
    """The ``img_processor`` of the Hub checkpoint: a holder for ``vision_model``."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.vision_model = CLIPVisionTower(config)


class Phi3VImageEmbedding(nn.Module):
    """Turns ``pixel_values`` (images x (1+num_crops) x 3 x S x S) into per-image token embeddings.

    >>> emb = Phi3VImageEmbedding(config)  # doctest: +SKIP
    >>> [t.shape for t in emb(pixel_values, image_sizes)]  # doctest: +SKIP
    [torch.Size([1921, 3072])]
    """

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        self.config = config
        # the tower's attention kernel: transformers sets it on vision_config (a sub-config)
        # with the decoder's, unless attn_implementation gives it one of its own
        self.img_processor = CLIPImageProcessor(config.vision_config)
        width = 4 * config.image_dim_out
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, width))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, width))
        self.img_projection = nn.Sequential(
            nn.Linear(width, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        # Hidden state k of CLIP is the output of its k-th layer (0: embeddings + pre-norm), so
        # feature_layer -2 needs only the first depth-1 layers. The rest (and post_layernorm)
        # stay loadable, for a faithful checkpoint round trip, but never run: they are frozen
        # so that optimisers and DDP do not wait for gradients that never come.
        depth = config.vision_config.num_hidden_layers
        layer = config.feature_layer
        self.num_layers_used = layer if layer >= 0 else depth + 1 + layer
        self.freeze_unused()

    def freeze_unused(self) -> None:
        """Mark the CLIP layers after ``feature_layer`` and the post-norm as not trainable."""
        tower = self.img_processor.vision_model
        for layer in tower.encoder.layers[self.num_layers_used :]:
            layer.requires_grad_(False)
        tower.post_layernorm.requires_grad_(False)

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """CLIP patch features (n, g*g, C) of ``crops`` (n, 3, S, S) at ``feature_layer``."""
        clip = self.img_processor.vision_model
        hidden = clip.embeddings(crops.to(clip.embeddings.patch_embedding.weight.dtype))
        hidden = clip.pre_layrnorm(hidden)
        for layer in clip.encoder.layers[: self.num_layers_used]:
            hidden = layer(hidden, None)
        return hidden[:, 1:]  # drop the class token: patch tokens only

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """One (tokens_i, hidden_size) tensor per image, in the order of ``pixel_values``."""
        grids = self.crop_grids(pixel_values, image_sizes)
        # Run CLIP only on the crops that exist: the processor pads every image to
        # 1+num_crops crops, and those padding crops are discarded by the reference anyway.
        # An image that fits one crop has a global view equal to that crop (the resize is
        # the identity): encode it once and use its features twice (half the tower's work at
        # num_crops 1, and for small photos at any num_crops).
        slots = pixel_values.shape[1]
        same = (pixel_values[:, 0] == pixel_values[:, 1]).flatten(1).all(1)
        index: list[int] = []
        views: list[list[int]] = []  # per image: rows of its global view and crops in feats
        for i, ((h, w), one) in enumerate(zip(grids, same.tolist(), strict=True)):
            first = len(index)
            if h * w == 1 and one:
                index.append(i * slots)
                views.append([first, first])
            else:
                index.extend(i * slots + j for j in range(1 + h * w))
                views.append(list(range(first, first + 1 + h * w)))
        crops = pixel_values.flatten(0, 1)[torch.tensor(index, device=pixel_values.device)]
        feats = self.crop_features(crops)
        per_image = [self.hd_tokens(feats[rows[0]], feats[rows[1:]], h, w)
                     for (h, w), rows in zip(grids, views, strict=True)]
        proj = self.img_projection[0].weight
        tokens = self.img_projection(torch.cat(per_image).to(proj.dtype))
        return list(tokens.split([t.shape[0] for t in per_image]))

    def crop_grids(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor
    ) -> list[tuple[int, int]]:
        """(h, w) crops per image from ``image_sizes`` (padded height, width), validated."""
        size = self.config.crop_size
        if pixel_values.ndim != 5 or pixel_values.shape[-2:] != (size, size):
            raise ValueError(
                f"pixel_values must be images x (1+num_crops) x 3 x {size} x {size}; "
                f"got shape {tuple(pixel_values.shape)}"
            )
        sizes = torch.as_tensor(image_sizes).reshape(-1, 2).tolist()
        if len(sizes) != pixel_values.shape[0]:
            raise ValueError(
                f"image_sizes has {len(sizes)} entries but pixel_values holds "
                f"{pixel_values.shape[0]} images"
            )
        grids = []
        for i, (height, width) in enumerate(sizes):
            h, w = int(height) // size, int(width) // size
            if h < 1 or w < 1 or height % size or width % size:
                raise ValueError(
                    f"image_sizes[{i}] = {(height, width)} is not a multiple of {size}"
                )
            if 1 + h * w > pixel_values.shape[1]:
                raise ValueError(
                    f"image {i} is {h}x{w} crops but pixel_values holds only "
                    f"{pixel_values.shape[1] - 1} crops per image"
                )
            grids.append((h, w))
        return grids

    def hd_tokens(self, glb: torch.Tensor, sub: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Merge, stitch and separate one image's features: (tokens, 4C), before projection."""
        m, c4 = self.config.merged_grid_side, self.glb_GN.shape[-1]
        newline = self.sub_GN.reshape(1, 1, c4)
        glb = self.merge_2x2(glb[None])[0]  # (m, m, 4C)
        glb = torch.cat([glb, newline.expand(m, 1, c4)], dim=1).reshape(-1, c4)
        sub = self.merge_2x2(sub)  # (h*w, m, m, 4C), crops in row-major order
        sub = sub.reshape(h, w, m, m, c4).permute(0, 2, 1, 3, 4).reshape(h * m, w * m, c4)
        sub = torch.cat([sub, newline.expand(h * m, 1, c4)], dim=1).reshape(-1, c4)
        sep = self.glb_GN.reshape(1, c4)
        parts = [sub, sep, glb] if self.config.hd_transform_order == "sub_glb" else [glb, sep, sub]
        return torch.cat(parts)

    def merge_2x2(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, g*g, C) -> (n, g/2, g/2, 4C): each 2x2 block of patches becomes one token."""
        n, _, c = feats.shape
        m = self.config.merged_grid_side
        blocks = feats.reshape(n, m, 2, m, 2, c).permute(0, 1, 3, 2, 4, 5)
        return blocks.reshape(n, m, m, 4 * c)
