"""Phi-3-vision configuration that reads the Hub's config.json as it is.

The Hub file (model_type ``phi3_v``) is a Phi-3 text config plus three keys: ``img_processor``
(which vision tower; the real checkpoint hard-codes CLIP ViT-L/14-336), ``embd_layer`` (how
image features become tokens) and the legacy ``rope_scaling`` of type ``su``, which is what
transformers now calls ``longrope``. We add one optional key, ``vision_config``: overrides of
the CLIP ViT-L/14-336 defaults, so tiny configs share every code path with the 4.2B model. The
conformance kit spells it ``vision_config_overrides``; both are accepted.

Every size the processor and the model need (crop size, patch size, merged grid side, image
token counts) is derived here from the vision config, never hard-coded elsewhere.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, PretrainedConfig
from transformers.models.phi3.configuration_phi3 import Phi3Config

from productvlm.models.compat import SubConfigSpec

# The vision tower of microsoft/Phi-3-vision-128k-instruct (openai/clip-vit-large-patch14-336).
CLIP_VIT_L_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}

DEFAULT_IMG_PROCESSOR: dict[str, Any] = {
    "name": "clip_vision_model",
    "model_name": "openai/clip-vit-large-patch14-336",
    "image_dim_out": 1024,
    "num_img_tokens": 144,
}

DEFAULT_EMBD_LAYER: dict[str, Any] = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

_VISION_KEYS_SAVED = (*CLIP_VIT_L_336, "attention_dropout", "initializer_range",
                      "initializer_factor", "model_type")

# Keys of the Hub file that only make sense for the remote code; never acted on here.
_IGNORED_HUB_KEYS = ("auto_map", "_attn_implementation", "_name_or_path")


def _legacy_rope_to_parameters(rope: dict[str, Any]) -> dict[str, Any]:
    """The Hub's ``{"type": "su", ...}`` as transformers' longrope parameters."""
    rope = dict(rope)
    kind = rope.pop("type", None) or rope.pop("rope_type", None) or "default"
    if kind in ("su", "longrope"):
        kind = "longrope"
    elif kind != "default":
        raise ValueError(
            f"config.json: rope_scaling type {kind!r} is not supported for phi3_v; "
            "expected 'su' (longrope) or none"
        )
    rope["rope_type"] = kind
    return rope


@strict
class Phi3VConfig(Phi3Config):
    """Configuration of Phi-3-vision / Phi-3.5-vision (Hub model_type ``phi3_v``).

    >>> cfg = Phi3VConfig.from_pretrained("../shared/phi3v-conformance/hub")  # doctest: +SKIP
    >>> cfg.crop_size, cfg.merged_grid_side, cfg.num_img_tokens, cfg.image_token_count(2, 3)
    (336, 12, 144, 1045)
    """

    model_type = "phi3_v"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "vision_config": SubConfigSpec(config_class=CLIPVisionConfig,
                                           init_kwargs=CLIP_VIT_L_336)
        }
    else:
        sub_configs = {"vision_config": CLIPVisionConfig}

    img_processor: dict | None = None
    embd_layer: dict | None = None
    vision_config: dict | PretrainedConfig | None = None

    def __post_init__(self, **kwargs):
        for key in _IGNORED_HUB_KEYS:
            kwargs.pop(key, None)
        # Legacy rope: the Hub writes rope_scaling {"type": "su"}; Phi3Config would keep "su"
        # through standardisation and then fail validation, so translate it first.
        rope_scaling = kwargs.pop("rope_scaling", None)
        if rope_scaling:
            self.rope_parameters = _legacy_rope_to_parameters(rope_scaling)
        elif isinstance(self.rope_parameters, dict) and self.rope_parameters.get("type") == "su":
            self.rope_parameters = _legacy_rope_to_parameters(self.rope_parameters)
        if isinstance(self.rope_parameters, dict) and self.rope_parameters.get("rope_type") == (
            "longrope"
        ):
            # The same ratio transformers would derive; stating it avoids its warning.
            self.rope_parameters.setdefault(
                "factor", self.max_position_embeddings / self.original_max_position_embeddings
            )

        self.img_processor = {**DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        self.embd_layer = {**DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        name = self.img_processor.get("name")
        if name != "clip_vision_model":
            raise ValueError(
                f"config.json: img_processor.name {name!r} is not supported; only "
                "'clip_vision_model' (CLIP ViT, as in Phi-3-vision) is"
            )
        self._check_embd_layer()

        # vision_config: ViT-L/14-336 defaults < vision_config < vision_config_overrides (kit)
        overrides = kwargs.pop("vision_config_overrides", None) or {}
        vision = self.vision_config
        if isinstance(vision, PretrainedConfig):
            vision = vision.to_dict()
        vision = {**CLIP_VIT_L_336, **(vision or {}), **overrides}
        for key in ("transformers_version", "model_type", "architectures"):
            vision.pop(key, None)
        self.vision_config = CLIPVisionConfig(**vision)
        super().__post_init__(**kwargs)
        self._check_vision_sizes()

    def _check_embd_layer(self) -> None:
        e = self.embd_layer
        problems = []
        if e.get("embedding_cls", "image") != "image":
            problems.append(f"embedding_cls {e.get('embedding_cls')!r} (expected 'image')")
        if e.get("projection_cls", "mlp") != "mlp":
            problems.append(f"projection_cls {e.get('projection_cls')!r} (expected 'mlp')")
        if not e.get("use_hd_transform", True) or not e.get("with_learnable_separator", True):
            problems.append("use_hd_transform and with_learnable_separator must be true")
        if e.get("hd_transform_order", "sub_glb") not in ("sub_glb", "glb_sub"):
            problems.append(f"hd_transform_order {e.get('hd_transform_order')!r}")
        if problems:
            raise ValueError("config.json: unsupported embd_layer: " + "; ".join(problems))

    def _check_vision_sizes(self) -> None:
        grid = self.crop_size // self.patch_size
        if self.crop_size % self.patch_size or grid % 2:
            raise ValueError(
                f"config.json: vision image_size {self.crop_size} must be a multiple of "
                f"patch_size {self.patch_size} with an even patch grid (2x2 merge); got {grid}"
            )
        if self.img_processor.get("type_feature", "patch") != "patch":
            raise ValueError("config.json: img_processor.type_feature must be 'patch'")
        depth = self.vision_config.num_hidden_layers
        if not -depth <= self.feature_layer < depth + 1:
            raise ValueError(
                f"config.json: img_processor.layer_idx {self.feature_layer} is outside the "
                f"{depth}-layer vision tower"
            )
        # The Hub file repeats two derived sizes; a mismatch means an inconsistent config,
        # which would otherwise surface as a shape error deep inside a forward pass.
        stated = self.img_processor.get("num_img_tokens")
        if stated is not None and stated != self.num_img_tokens:
            raise ValueError(
                f"config.json: img_processor.num_img_tokens is {stated} but the vision config "
                f"(image {self.crop_size}, patch {self.patch_size}) gives {self.num_img_tokens}"
            )
        stated = self.img_processor.get("image_dim_out")
        if stated is not None and stated != self.image_dim_out:
            raise ValueError(
                f"config.json: img_processor.image_dim_out is {stated} but the vision tower "
                f"width is {self.image_dim_out}"
            )

    # ---- sizes derived from the vision config -------------------------------------------
    @property
    def crop_size(self) -> int:
        """Side of one square crop in pixels (336 for the real model)."""
        return int(self.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.patch_size)

    @property
    def merged_grid_side(self) -> int:
        """m: side of a crop's token grid after the 2x2 merge (336/14/2 = 12)."""
        return self.crop_size // self.patch_size // 2

    @property
    def num_img_tokens(self) -> int:
        """Tokens of one crop after the merge, m*m (144 for the real model)."""
        return self.merged_grid_side**2

    @property
    def image_dim_out(self) -> int:
        """Width of the vision features before the merge (CLIP hidden size)."""
        return int(self.vision_config.hidden_size)

    @property
    def feature_layer(self) -> int:
        """Which CLIP hidden state feeds the projection (-2: the penultimate layer)."""
        return int(self.img_processor.get("layer_idx", -2))

    @property
    def hd_transform_order(self) -> str:
        return str(self.embd_layer.get("hd_transform_order", "sub_glb"))

    def image_token_count(self, h_crops: int, w_crops: int) -> int:
        """Tokens of one image whose padded size is h_crops x w_crops crops.

        ``(h*w + 1) * m*m + 1 + (h + 1) * m``: the crops and the global view, one ``glb_GN``,
        and one ``sub_GN`` at the end of every merged row.
        """
        m = self.merged_grid_side
        return (h_crops * w_crops + 1) * m * m + 1 + (h_crops + 1) * m

    # ---- serialisation in the Hub's format ----------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        rope = dict(out.pop("rope_parameters", None) or {})
        out["rope_theta"] = rope.pop("rope_theta", 10000.0)
        kind = rope.pop("rope_type", "default")
        rope.pop("original_max_position_embeddings", None)
        rope.pop("partial_rotary_factor", None)
        if rope.get("factor") == out["max_position_embeddings"] / out[
            "original_max_position_embeddings"
        ]:
            rope.pop("factor")
        # the remote code and other Hub readers expect the legacy spelling "su"
        out["rope_scaling"] = {"type": "su", **rope} if kind == "longrope" else None
        if out.get("dtype") is not None:
            out["torch_dtype"] = out["dtype"]  # the spelling transformers 4.x reads
        vision = out["vision_config"]
        out["vision_config"] = {k: vision[k] for k in _VISION_KEYS_SAVED if k in vision}
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        # Keep every model field (a Hub reader has its own defaults, which may differ);
        # drop only the generic PretrainedConfig fields left at their defaults.
        out = self.to_dict()
        base = PretrainedConfig().to_dict()
        keep = {"transformers_version", "architectures", "model_type"}
        out = {k: v for k, v in out.items() if k in keep or k not in base or v != base[k]}
        out.pop("_name_or_path", None)
        return out


__all__ = ["Phi3VConfig", "CLIP_VIT_L_336"]
