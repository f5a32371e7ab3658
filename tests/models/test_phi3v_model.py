"""Phi3VConfig / Phi3VForCausalLM on tiny random models: configs, save/reload in the Hub format,
batched generation, LoRA + gradient checkpointing, and bad-input errors.

Inputs are built by hand (image k's positions hold -k), so these tests do not depend on the
processor; the conformance kit is only read where a test says so.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import productvlm.models.phi3v  # noqa: F401  registers the Auto classes
from productvlm.models.phi3v import Phi3VConfig, Phi3VForCausalLM
from productvlm.models.phi3v.tiny import tiny_config, tiny_model

VOCAB = 320


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    return tiny_model(tiny_config(VOCAB), seed=0)


def image_row(cfg: Phi3VConfig, prompt: list[int], grids: list[tuple[int, int]]) -> list[int]:
    """<s> prompt, then for each image k its -k run and one text token, like the processor."""
    ids = [1, *prompt]
    for k, (h, w) in enumerate(grids, start=1):
        ids += [-k] * cfg.image_token_count(h, w) + [13]
    return ids + [5, 6]


def pixels(cfg: Phi3VConfig, grids: list[tuple[int, int]], slots: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.crop_size
    pv = torch.randn(len(grids), slots + 1, 3, s, s, generator=g)
    sizes = torch.tensor([[h * s, w * s] for h, w in grids])
    return pv, sizes


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(map(len, rows))
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# ---------------------------------------------------------------- configuration
def test_hub_configs_load_with_derived_sizes(conformance_dir) -> None:
    for name, layers, window in (("hub", 24, 131072), ("hub-3.5", 24, 262144), ("tiny", 2, 131072)):
        cfg = Phi3VConfig.from_pretrained(conformance_dir / name)
        assert cfg.rope_parameters["rope_type"] == "longrope"
        assert (cfg.crop_size, cfg.patch_size, cfg.merged_grid_side) == (336, 14, 12)
        assert cfg.num_img_tokens == 144 and cfg.vision_config.num_hidden_layers == layers
        assert cfg.sliding_window == window
        assert cfg.image_token_count(2, 2) == 5 * 144 + 1 + 3 * 12
        assert cfg._attn_implementation != "flash_attention_2"  # the Hub's key is ignored
    tiny = Phi3VConfig.from_pretrained(conformance_dir / "tiny")
    assert tiny.vision_config.intermediate_size == 256 and tiny.vision_config.hidden_size == 1024


def test_config_round_trip_writes_hub_rope(tmp_path) -> None:
    cfg = tiny_config(VOCAB)
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "phi3_v" and raw["rope_scaling"]["type"] == "su"
    assert "auto_map" not in raw
    again = Phi3VConfig.from_pretrained(tmp_path)
    assert again.to_dict() == cfg.to_dict()
    assert again.crop_size == 112 and again.num_img_tokens == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"img_processor": {"name": "siglip_vision_model"}}, "img_processor.name"),
        ({"embd_layer": {"projection_cls": "linear"}}, "embd_layer"),
        ({"img_processor": {"num_img_tokens": 100}}, "num_img_tokens"),
        ({"vision_config": {"image_size": 98}}, "even patch grid"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling type"),
    ],
)
def test_bad_config_is_a_clear_value_error(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        Phi3VConfig(**change)


# ---------------------------------------------------------------- save / reload
def test_save_writes_hub_keys_and_reloads_identically(model, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.vision_embed_tokens.img_processor.vision_model.embeddings.class_embedding" in keys
    assert "model.vision_embed_tokens.img_projection.2.weight" in keys
    assert {"model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.sub_GN"} <= keys
    assert "model.layers.0.self_attn.qkv_proj.weight" in keys
    assert not any(".img_processor.encoder." in k for k in keys)
    again, info = Phi3VForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    cfg = model.config
    ids = torch.tensor([image_row(cfg, [7, 8], [(1, 2)])])
    pv, sizes = pixels(cfg, [(1, 2)], 2)
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits
        b = again.eval()(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- forward semantics
def test_images_change_the_logits_and_rows_are_independent(model) -> None:
    cfg = model.config
    grids = [[(1, 1)], [(2, 1), (1, 2)]]
    rows = [image_row(cfg, [7], grids[0]), image_row(cfg, [9, 10, 11], grids[1])]
    pv, sizes = pixels(cfg, grids[0] + grids[1], 2)
    n = max(map(len, rows))
    ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])  # right padding, training-style
    mask = (torch.arange(n) < torch.tensor([[len(r)] for r in rows])).long()
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes).logits
        one = model(input_ids=torch.tensor([rows[1]]), pixel_values=pv[1:], image_sizes=sizes[1:])
        other = pv.clone()
        other[2] += 1.0  # change the second row's second image only
        moved = model(input_ids=ids, attention_mask=mask, pixel_values=other, image_sizes=sizes)
    torch.testing.assert_close(both[1, : len(rows[1])], one.logits[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(moved.logits[0], both[0])
    assert not torch.allclose(moved.logits[1, -1], both[1, -1])


def test_eager_and_sdpa_agree(model) -> None:
    cfg = model.config
    ids = torch.tensor([image_row(cfg, [7, 8], [(1, 1)])])
    pv, sizes = pixels(cfg, [(1, 1)], 1)
    with torch.no_grad():
        sdpa = model(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits
        model.set_attn_implementation("eager")
        try:
            eager = model(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits
        finally:
            model.set_attn_implementation("sdpa")
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def test_batched_left_padded_generate_equals_unbatched(model) -> None:
    cfg = model.config
    grids = [[(1, 2)], [], [(2, 1), (1, 1)]]
    rows = [image_row(cfg, [7], grids[0]), [1, 20, 21, 22, 23, 24], image_row(cfg, [9], grids[2])]
    flat = [g for gs in grids for g in gs]
    pv, sizes = pixels(cfg, flat, 2)
    ids, mask = left_pad(rows)
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pv,
                             image_sizes=sizes, **kw)[:, ids.shape[1]:]
    start = 0
    for b, row in enumerate(rows):
        n = len(grids[b])
        part = slice(start, start + n)
        extra = {"pixel_values": pv[part], "image_sizes": sizes[part]} if n else {}
        start += n
        single = model.generate(input_ids=torch.tensor([row]), **extra, **kw)[0, len(row):]
        assert batched[b].tolist() == single.tolist(), f"row {b}"


def test_labels_ignore_image_positions_and_prompt(model) -> None:
    cfg = model.config
    ids = torch.tensor([image_row(cfg, [7], [(1, 1)]) + [30, 31, 32]])
    pv, sizes = pixels(cfg, [(1, 1)], 1)
    labels = ids.clone()  # image positions hold -1: must be ignored, not crash
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pv, image_sizes=sizes, labels=labels)
    keep = (ids[0, 1:] >= 0)
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1][keep], ids[0, 1:][keep])
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------- training
def test_lora_with_gradient_checkpointing_trains_the_adapters(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_model(tiny_config(VOCAB), seed=1).train()
    model.activation_checkpointing_enable({"use_reentrant": False})
    targets = r".*(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj)|img_projection\.[02])"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    cfg = model.config
    ids = torch.tensor([image_row(cfg, [7], [(1, 2)]) + [30, 31]] * 2)
    pv, sizes = pixels(cfg, [(1, 2), (1, 2)], 2)
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    loss = peft_model(input_ids=ids, pixel_values=pv, image_sizes=sizes, labels=labels).loss
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert any("img_projection" in n for n in grads)  # the projection's adapters learn too
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_unused_clip_layers_are_frozen_after_loading(model, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    again = Phi3VForCausalLM.from_pretrained(tmp_path)
    frozen = {n for n, p in again.named_parameters() if not p.requires_grad}
    last = again.config.vision_config.num_hidden_layers - 1  # feature_layer -2: never runs
    assert any(f"encoder.layers.{last}." in n for n in frozen)
    assert any("post_layernorm" in n for n in frozen)
    assert not any("encoder.layers.0." in n for n in frozen)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_clear_value_errors(model) -> None:
    cfg = model.config
    one = torch.tensor([image_row(cfg, [7], [(1, 1)])])
    two = torch.tensor([image_row(cfg, [7], [(1, 1), (1, 1)])])
    pv1, s1 = pixels(cfg, [(1, 1)], 1)
    pv2, s2 = pixels(cfg, [(1, 1), (1, 1)], 1)
    text = torch.tensor([[1, 5, 6, 7]])
    cases = [
        (dict(input_ids=one), "no pixel_values"),
        (dict(input_ids=text, pixel_values=pv1, image_sizes=s1), "no image positions"),
        (dict(input_ids=one, pixel_values=pv2, image_sizes=s2), "1 image.*holds 2"),
        (dict(input_ids=two, pixel_values=pv1, image_sizes=s1), "2 image.*holds 1"),
        (dict(input_ids=one, pixel_values=pv1), "without image_sizes"),
        (dict(input_ids=one, pixel_values=pv1, image_sizes=torch.tensor([[112, 224]])), "crops"),
        (dict(input_ids=one.masked_fill(one == -1, -2), pixel_values=pv1, image_sizes=s1),
         "image positions hold \\[-2\\]"),
        (dict(input_ids=one[:, :-20].contiguous(), pixel_values=pv1, image_sizes=s1),
         "positions but its image_sizes"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message), torch.no_grad():
            model(**kwargs)


def test_training_loss_skips_prompt_logits_but_equals_the_full_loss(model) -> None:
    cfg = model.config
    rows = [image_row(cfg, [7], [(1, 1)]) + [30, 31, 32], image_row(cfg, [8, 9], [(1, 2)]) + [33]]
    n = max(map(len, rows))
    ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
    labels = torch.full_like(ids, -100)
    labels[0, len(rows[0]) - 3 : len(rows[0])] = torch.tensor([30, 31, 32])
    labels[1, len(rows[1]) - 1] = 33
    mask = (labels != -100) | (torch.arange(n) < torch.tensor([[len(r)] for r in rows]))
    pv, sizes = pixels(cfg, [(1, 1), (1, 2)], 2)
    kw = dict(input_ids=ids, attention_mask=mask.long(), pixel_values=pv, image_sizes=sizes,
              labels=labels)
    with torch.no_grad():
        full = model(**kw)
        model.train()
        try:
            sparse = model(**kw)
            summed = model(**kw, num_items_in_batch=torch.tensor(8))
        finally:
            model.eval()
    assert full.logits is not None and sparse.logits is None
    torch.testing.assert_close(sparse.loss, full.loss)
    torch.testing.assert_close(summed.loss, full.loss * 4 / 8)


def test_full_size_configs_build_the_hub_architecture(conformance_dir) -> None:
    import re

    from safetensors.torch import load_file

    pattern = lambda k: re.sub(r"\.layers\.\d+\.", ".layers.N.", k)  # noqa: E731
    tiny_keys = set(load_file(conformance_dir / "tiny" / "model.safetensors"))
    expected = {pattern(k) for k in tiny_keys} - {"model.vision_embed_tokens.wte.weight"}
    for name in ("hub", "hub-3.5"):
        cfg = Phi3VConfig.from_pretrained(conformance_dir / name)
        with torch.device("meta"):  # no memory: shapes and names only
            model = Phi3VForCausalLM(cfg)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {pattern(k) for k in shapes} == expected
        assert sum(1 for k in shapes if k.endswith("self_attn.qkv_proj.weight")) == 32
        assert shapes["model.layers.0.self_attn.qkv_proj.weight"] == (9216, 3072)
        assert shapes["model.layers.0.mlp.gate_up_proj.weight"] == (16384, 3072)
        vision = "model.vision_embed_tokens."
        assert shapes[vision + "img_projection.0.weight"] == (3072, 4096)
        assert shapes[vision + "glb_GN"] == (1, 1, 4096)
        assert shapes[vision + "sub_GN"] == (1, 1, 1, 4096)
        tower = vision + "img_processor.vision_model."
        assert shapes[tower + "embeddings.position_embedding.weight"] == (577, 1024)
        assert shapes[tower + "encoder.layers.23.mlp.fc1.weight"] == (4096, 1024)


def test_torch_vision_init_changes_only_the_image_side() -> None:
    cfg = tiny_config(VOCAB)
    clip, torch_init = tiny_model(cfg, seed=0), tiny_model(cfg, seed=0, vision_init="torch")
    pos = "model.vision_embed_tokens.img_processor.vision_model.embeddings.position_embedding"
    clip_sd, torch_sd = clip.state_dict(), torch_init.state_dict()
    assert clip_sd[f"{pos}.weight"].std() < 0.05 < 0.5 < torch_sd[f"{pos}.weight"].std()
    for name, value in clip_sd.items():
        if "vision_embed_tokens." not in name:
            assert torch.equal(value, torch_sd[name]), name


def test_one_crop_images_encode_their_shared_view_once(model) -> None:
    """An image that fits one crop has global view == crop: one tower pass, same tokens."""
    embed = model.model.vision_embed_tokens
    pv, sizes = pixels(model.config, [(1, 1), (1, 1), (1, 2)], slots=2)
    pv[:2, 1] = pv[:2, 0]  # what the processor makes of a photo that fits one crop
    pv[1, 1, 0, 0, 0] += 1e-3  # ... and one whose views differ after all
    seen = []
    original = embed.crop_features

    def counting(crops):
        seen.append(len(crops))
        return original(crops)

    embed.crop_features = counting
    try:
        tokens = embed(pv, sizes)
    finally:
        del embed.crop_features
    assert seen == [1 + 2 + 3]  # the shared view once, then 2 + 3 distinct views
    for i, (h, w) in enumerate([(1, 1), (1, 1), (1, 2)]):
        feats = original(pv[i, : 1 + h * w])
        expected = embed.img_projection(embed.hd_tokens(feats[0], feats[1:], h, w))
        torch.testing.assert_close(tokens[i], expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- transformers' hooks
def test_transformers_still_reads_the_model_author_hooks(tmp_path) -> None:
    """Phi3VPreTrainedModel relies on hooks transformers reads from a model class
    (``_init_weights``, ``_keys_to_ignore_on_load_unexpected``): each assert names the hook a
    transformers release stopped reading."""
    import transformers
    from safetensors.torch import load_file, save_file

    cfg = tiny_config(VOCAB)
    model = tiny_model(cfg, seed=0)
    embed = model.model.vision_embed_tokens.img_processor.vision_model.embeddings
    width = embed.class_embedding.numel()
    assert abs(embed.class_embedding.std().item() - width ** -0.5) < 0.5 * width ** -0.5, (
        f"transformers {transformers.__version__} no longer calls "
        "Phi3VPreTrainedModel._init_weights on new models (CLIP's class embedding kept "
        "torch's N(0, 1))")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.vision_embed_tokens.wte.weight"] = torch.zeros(VOCAB, 8)  # the Hub's copy
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = Phi3VForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], (
        f"transformers {transformers.__version__} no longer honours "
        f"_keys_to_ignore_on_load_unexpected: {info}")
