"""Phi-3-vision for causal LM on current transformers, loading the Hub checkpoint as it is.

The decoder is transformers' own Phi-3 (fused ``qkv_proj`` / ``gate_up_proj``, longrope), so
SDPA, eager, flash-attention 2, gradient checkpointing and the KV cache come from upstream.
What this file adds is where image tokens enter: the processor writes ``-k`` at every position
of image k of a row, and those positions receive image k's projected features
(see vision.py) instead of a token embedding. ``pixel_values`` lists every image of the batch,
row by row and in k order within a row; ``image_sizes`` gives each one's padded size.

The Hub checkpoint also stores ``model.vision_embed_tokens.wte.weight``, a second copy of
``model.embed_tokens.weight`` (the remote code shares the module); it is accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention, CLIPVisionEmbeddings
from transformers.models.phi3.modeling_phi3 import Phi3Model, Phi3PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .configuration import Phi3VConfig
from .vision import Phi3VImageEmbedding


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    # The underscored names below are transformers' hooks for model authors, not private calls:
    # a PreTrainedModel subclass declares them and transformers reads them (every model in
    # transformers is written so), and there is no public spelling of them.
    # tests/models/test_phi3v_model.py::test_transformers_still_reads_the_model_author_hooks
    # fails, naming the hook, on a release that stops reading one.
    config_class = Phi3VConfig
    input_modalities = ("image", "text")
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"vision_embed_tokens\.wte\.weight"]
    _can_compile_fullgraph = False  # image placement depends on the ids' values

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            # the reference starts its separators at zero
            init.zeros_(module.glb_GN)
            init.zeros_(module.sub_GN)
        elif isinstance(module, CLIPVisionEmbeddings):
            # CLIP's own scheme (CLIPPreTrainedModel._init_weights); matters when training
            # a tiny tower from scratch
            std = module.config.initializer_range * module.config.initializer_factor
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            init.normal_(module.patch_embedding.weight, std=std)
            init.normal_(module.position_embedding.weight, std=std)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, (CLIPAttention, CLIPMLP)):
            cfg = module.config
            width = cfg.hidden_size
            in_std = width**-0.5 * (2 * cfg.num_hidden_layers) ** -0.5 * cfg.initializer_factor
            if isinstance(module, CLIPAttention):
                for proj in (module.q_proj, module.k_proj, module.v_proj):
                    init.normal_(proj.weight, std=in_std)
                init.normal_(module.out_proj.weight, std=width**-0.5 * cfg.initializer_factor)
            else:
                init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * cfg.initializer_factor)
                init.normal_(module.fc2.weight, std=in_std)


class Phi3VModel(Phi3Model, Phi3VPreTrainedModel):
    """Phi-3 decoder with ``vision_embed_tokens``; key names as in the Hub checkpoint."""

    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    def embed(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token embeddings with image k's features at the positions holding ``-k``."""
        image_mask = input_ids < 0
        has_tags = bool(image_mask.any())
        if pixel_values is None:
            if has_tags:
                raise ValueError(
                    "input_ids hold image positions (negative ids) but no pixel_values were "
                    "given; pass the processor's pixel_values and image_sizes"
                )
            return self.embed_tokens(input_ids)
        if not has_tags:
            raise ValueError(
                f"pixel_values holds {pixel_values.shape[0]} image(s) but input_ids have no image "
                "positions; put <|image_1|> ... in the prompt and tokenize with the processor"
            )
        if image_sizes is None:
            raise ValueError(
                "pixel_values given without image_sizes; pass the processor's image_sizes"
            )
        order = self._image_order(input_ids, pixel_values.shape[0])
        embeds = self.embed_tokens(input_ids.clamp(min=0))
        features = self.vision_embed_tokens(pixel_values, image_sizes)
        placed = []
        for row, image, count in order:
            if features[image].shape[0] != count:
                size = tuple(torch.as_tensor(image_sizes).reshape(-1, 2)[image].tolist())
                raise ValueError(
                    f"input_ids row {row}: image {image} has {count} positions but its "
                    f"image_sizes {size} give {features[image].shape[0]} tokens; the "
                    "processor and model configs disagree"
                )
            placed.append(features[image])
        flat = torch.cat(placed).to(embeds.dtype)
        return embeds.masked_scatter(image_mask.unsqueeze(-1), flat)

    @staticmethod
    def _image_order(input_ids: torch.Tensor, num_images: int) -> list[tuple[int, int, int]]:
        """(row, index into pixel_values, positions) for each image run, in position order."""
        order, offset = [], 0
        for row, ids in enumerate(input_ids.detach().cpu()):
            values, counts = torch.unique_consecutive(ids, return_counts=True)
            runs = [(-int(v), int(c)) for v, c in zip(values, counts, strict=True) if v < 0]
            ks = [k for k, _ in runs]
            if sorted(ks) != list(range(1, len(ks) + 1)):
                raise ValueError(
                    f"input_ids row {row}: image positions hold {[-k for k in ks]} in runs; each "
                    "image k=1..n must fill one contiguous run of -k"
                )
            order += [(row, offset + k - 1, count) for k, count in runs]
            offset += len(ks)
        if offset != num_images:
            raise ValueError(
                f"input_ids hold {offset} image(s) (tags -1..-n per row) but pixel_values holds "
                f"{num_images}; list every image of the batch, row by row"
            )
        return order

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
        elif pixel_values is not None:
            raise ValueError(
                "pixel_values need input_ids (with image positions), not inputs_embeds"
            )
        return super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    """Phi-3-vision / Phi-3.5-vision with an LM head.

    >>> model = Phi3VForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)  # doctest: +SKIP
    >>> batch = processor(text=[prompt], images=[[image]], return_tensors="pt")  # doctest: +SKIP
    >>> logits = model(**batch).logits  # doctest: +SKIP
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_embed_tokens.img_processor.vision_model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then re-freeze the CLIP layers never run.

        Loading replaces the parameters, which drops the ``requires_grad=False`` set at init.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.model.vision_embed_tokens.freeze_unused()
        return loaded

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits, and the mean next-token loss over labels != -100 (negatives ignored).

        In training mode with ``labels``, logits are computed only where a label follows
        (the answer), and ``logits`` is None: the prompt and its thousands of image positions
        would otherwise cost a (sequence x 32,064) float tensor per row for nothing.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        loss = logits = None
        if labels is not None:
            # image positions copied from input_ids (-k) are never targets
            labels = labels.masked_fill(labels < 0, -100)
        whole = isinstance(logits_to_keep, int)
        if labels is not None and self.training and whole and logits_to_keep == 0:
            loss = self._answer_loss(hidden, labels, kwargs.get("num_items_in_batch"))
        else:
            keep = slice(-logits_to_keep, None) if whole else logits_to_keep
            logits = self.lm_head(hidden[:, keep, :])
            if labels is not None:
                loss = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
                )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _answer_loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, num_items: Any = None
    ) -> torch.Tensor:
        """transformers' causal-LM loss (shifted, summed / num_items or mean), with the LM
        head applied only at the positions that predict a label."""
        targets = labels[:, 1:]
        where = targets != -100
        logits = self.lm_head(hidden[:, :-1][where]).float()
        loss = nn.functional.cross_entropy(logits, targets[where], reduction="sum")
        if num_items is None:
            num_items = where.sum().clamp(min=1)
        if isinstance(num_items, torch.Tensor):
            num_items = num_items.to(loss.device)
        return loss / num_items

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(self, input_ids, cache=None, **kwargs):
        # Past original_max_position_embeddings longrope switches to its long factors, and the
        # cached keys (rotated with the short ones) are recomputed from scratch, as Phi-3 does.
        # That re-run sees the image positions again, so it must keep the pixel values.
        limit = self.config.original_max_position_embeddings
        long_now = input_ids.shape[1] >= limit + 1
        if cache is not None and long_now and cache.get_seq_length() <= limit:
            cache = None
            kwargs["next_sequence_length"] = None
            kwargs["is_first_iteration"] = True
        return super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)


__all__ = ["Phi3VForCausalLM", "Phi3VModel", "Phi3VPreTrainedModel"]
