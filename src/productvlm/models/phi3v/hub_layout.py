"""The tensors of a Phi-3-vision checkpoint in the Hub's layout, derived from its config.

microsoft/Phi-3-vision-128k-instruct stores every tensor in bf16 under the names of the
reference code's module tree: ``Phi3VForCausalLM`` = ``model`` (``embed_tokens``, ``layers.N``
with fused ``self_attn.qkv_proj`` and ``mlp.gate_up_proj``, ``norm``, ``vision_embed_tokens``)
+ ``lm_head``. ``vision_embed_tokens`` holds a full transformers ``CLIPVisionModel`` as
``img_processor`` (all its layers and ``post_layernorm``, though features come from hidden
state -2), the separators ``glb_GN`` / ``sub_GN`` (width 4 x ``image_dim_out``: the 2x2
merge), the projection ``img_projection.0`` / ``.2`` (Linear, GELU, Linear), and ``wte``, the
decoder's embedding module shared by reference, hence saved a second time.

The shapes come from config.json alone, never from our modules, so they check them (and any
checkpoint we write) against what the Hub's loaders expect.

>>> shapes = hub_tensor_shapes(Phi3VConfig.from_pretrained("../shared/phi3v-conformance/hub"))
... # doctest: +SKIP
>>> shapes["model.layers.0.self_attn.qkv_proj.weight"]  # doctest: +SKIP
(9216, 3072)
"""

from __future__ import annotations

import json
from pathlib import Path

from .configuration import Phi3VConfig

#: dtype of every tensor in the Hub checkpoint (config.json: torch_dtype bfloat16)
HUB_DTYPE = "BF16"
#: the shared-embedding copy the reference module tree saves beside model.embed_tokens
WTE_COPY = "model.vision_embed_tokens.wte.weight"
INDEX = "model.safetensors.index.json"
_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1}


def hub_tensor_shapes(config: Phi3VConfig, *, wte_copy: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the Hub checkpoint for ``config``, with its shape."""
    d, vocab, inter = config.hidden_size, config.vocab_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = d // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        shapes[layer + "self_attn.qkv_proj.weight"] = ((heads + 2 * kv_heads) * head_dim, d)
        shapes[layer + "self_attn.o_proj.weight"] = (d, heads * head_dim)
        shapes[layer + "mlp.gate_up_proj.weight"] = (2 * inter, d)
        shapes[layer + "mlp.down_proj.weight"] = (d, inter)
        shapes[layer + "input_layernorm.weight"] = (d,)
        shapes[layer + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (vocab, d)

    vision = config.vision_config
    width, patch = vision.hidden_size, vision.patch_size
    positions = (vision.image_size // patch) ** 2 + 1  # patches + the class token
    tower = "model.vision_embed_tokens.img_processor.vision_model."
    shapes[tower + "embeddings.class_embedding"] = (width,)
    shapes[tower + "embeddings.patch_embedding.weight"] = (width, vision.num_channels, patch,
                                                          patch)
    shapes[tower + "embeddings.position_embedding.weight"] = (positions, width)
    for norm in ("pre_layrnorm", "post_layernorm"):
        shapes[f"{tower}{norm}.weight"] = shapes[f"{tower}{norm}.bias"] = (width,)
    for i in range(vision.num_hidden_layers):
        layer = f"{tower}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (width, width)
            shapes[f"{layer}self_attn.{proj}.bias"] = (width,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}{norm}.weight"] = shapes[f"{layer}{norm}.bias"] = (width,)
        shapes[layer + "mlp.fc1.weight"] = (vision.intermediate_size, width)
        shapes[layer + "mlp.fc1.bias"] = (vision.intermediate_size,)
        shapes[layer + "mlp.fc2.weight"] = (width, vision.intermediate_size)
        shapes[layer + "mlp.fc2.bias"] = (width,)

    merged = 4 * int(config.img_processor.get("image_dim_out", width))  # the 2x2 merge
    embed = "model.vision_embed_tokens."
    shapes[embed + "glb_GN"] = (1, 1, merged)
    shapes[embed + "sub_GN"] = (1, 1, 1, merged)
    shapes[embed + "img_projection.0.weight"] = (d, merged)
    shapes[embed + "img_projection.0.bias"] = (d,)
    shapes[embed + "img_projection.2.weight"] = (d, d)
    shapes[embed + "img_projection.2.bias"] = (d,)
    if wte_copy:
        shapes[WTE_COPY] = (vocab, d)
    return shapes


def read_layout(folder: str | Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], list[str]]:
    """({name: (shape, dtype)}, problems) of a checkpoint folder, from safetensors headers only.

    A sharded folder is read through model.safetensors.index.json, which must name every
    tensor of every shard, each in the shard that holds it, and give their total size.
    """
    from safetensors import safe_open

    folder = Path(folder)
    index_path = folder / INDEX
    problems: list[str] = []
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        weight_map: dict[str, str] = index.get("weight_map", {})
        files = sorted(set(weight_map.values()))
    else:
        single = folder / "model.safetensors"
        weight_map, files = {}, ["model.safetensors"] if single.is_file() else []
    if not files:
        return {}, [f"{folder}: no model.safetensors and no {INDEX}"]
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    total = 0
    for name in files:
        with safe_open(str(folder / name), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                info = f.get_slice(key)
                shape, dtype = tuple(info.get_shape()), info.get_dtype()
                found[key] = (shape, dtype)
                total += _BYTES.get(dtype, 0) * _numel(shape)
                if weight_map and weight_map.get(key) != name:
                    problems.append(f"{key} is in {name} but the index says {weight_map.get(key)}")
    if weight_map:
        missing = sorted(set(weight_map) - set(found))
        if missing:
            problems.append(f"the index names {len(missing)} tensor(s) no shard holds: "
                            f"{missing[:3]}")
        stated = index.get("metadata", {}).get("total_size")
        if stated is not None and int(stated) != total:
            problems.append(f"index total_size {stated} != {total} bytes in the shards")
    return found, problems


def compare_layout(found: dict[str, tuple[tuple[int, ...], str]],
                   expected: dict[str, tuple[int, ...]], dtype: str = HUB_DTYPE) -> list[str]:
    """What differs between a checkpoint's tensors and the expected names, shapes and dtype."""
    problems = []
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[:3]}")
    for key in sorted(set(found) & set(expected)):
        shape, got = found[key]
        if shape != expected[key]:
            problems.append(f"{key}: shape {shape}, expected {expected[key]}")
        if got != dtype:
            problems.append(f"{key}: dtype {got}, expected {dtype}")
    return problems


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    """Total elements of a tensor list (count the wte copy once: leave it out of ``shapes``)."""
    return sum(_numel(s) for s in shapes.values())


__all__ = ["HUB_DTYPE", "INDEX", "WTE_COPY", "compare_layout", "hub_tensor_shapes",
           "parameter_count", "read_layout"]
