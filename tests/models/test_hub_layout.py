"""The Hub checkpoint's tensor list, derived from config.json, against the conformance kit's
real key names, and merged/ written by save_merged in that layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from productvlm.models.merged import save_merged
from productvlm.models.phi3v import Phi3VConfig
from productvlm.models.phi3v.hub_layout import (
    INDEX,
    WTE_COPY,
    compare_layout,
    hub_tensor_shapes,
    parameter_count,
    read_layout,
)


def test_derivation_matches_the_kit_checkpoint(conformance_dir: Path) -> None:
    tiny = conformance_dir / "tiny"
    found, problems = read_layout(tiny)
    assert problems == []
    expected = hub_tensor_shapes(Phi3VConfig.from_pretrained(tiny))
    assert compare_layout(found, expected) == []
    assert WTE_COPY in found and len(found) == len(expected) == 61


def test_full_size_tensor_list(conformance_dir: Path) -> None:
    config = Phi3VConfig.from_pretrained(conformance_dir / "hub")
    shapes = hub_tensor_shapes(config, wte_copy=False)
    assert parameter_count(shapes) == 4_146_621_440  # "4.2B"
    assert shapes["model.layers.31.self_attn.qkv_proj.weight"] == (9216, 3072)
    assert shapes["model.layers.0.mlp.gate_up_proj.weight"] == (16384, 3072)
    tower = "model.vision_embed_tokens.img_processor.vision_model."
    assert shapes[tower + "embeddings.position_embedding.weight"] == (577, 1024)
    assert tower + "encoder.layers.23.mlp.fc2.bias" in shapes  # all 24 CLIP layers are saved
    assert shapes["model.vision_embed_tokens.img_projection.0.weight"] == (3072, 4096)


def test_our_modules_and_save_merged_write_that_layout(tmp_path: Path) -> None:
    from productvlm.models.phi3v.tiny import tiny_model

    model = tiny_model().to(torch.bfloat16)
    expected = hub_tensor_shapes(model.config)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == {k: s for k, s in expected.items() if k != WTE_COPY}

    class NoProcessor:
        def save_pretrained(self, out: Path) -> None:
            pass

    base = tmp_path / "base"
    model.save_pretrained(base)
    save_merged(model, NoProcessor(), tmp_path / "merged", base=base)
    found, problems = read_layout(tmp_path / "merged")
    assert problems == [] and compare_layout(found, expected) == []
    assert not (tmp_path / "merged" / INDEX).exists()  # one small shard, as the Hub does
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "phi3_v"


def test_a_broken_index_is_reported(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2, 3, dtype=torch.bfloat16)}, tmp_path / "s1.safetensors")
    index = {"metadata": {"total_size": 99}, "weight_map": {"a": "s1.safetensors",
                                                            "b": "s1.safetensors"}}
    (tmp_path / INDEX).write_text(json.dumps(index))
    found, problems = read_layout(tmp_path)
    assert found == {"a": ((2, 3), "BF16")}
    assert any("no shard holds" in p for p in problems)
    assert any("total_size 99 != 12" in p for p in problems)
    assert compare_layout(found, {"a": (3, 2), "c": (1,)}) == [
        "1 tensor(s) missing, e.g. ['c']", "a: shape (2, 3), expected (3, 2)"]
    assert compare_layout(found, {"a": (2, 3)}, dtype="F32") == ["a: dtype BF16, expected F32"]
