"""Model conformance with the reference Phi-3-vision, on ../shared/phi3v-conformance/tiny.

Uses the stored ``input_ids`` / ``pixel_values`` / ``image_sizes`` of each case, so it does not
depend on the processor (tests/models/test_phi3v_processor.py checks that side). Checked: loading
(every tensor, the ``wte`` copy tolerated), the last 8 logits and the answer loss, and the 8
tokens the reference generates greedily *with the images*, exactly, for all 10 cases: with the KV
cache, with a full forward pass per step, and with every case in one left-padded batch.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import productvlm.models.phi3v  # noqa: F401  registers the Auto classes
from productvlm.models.phi3v import Phi3VForCausalLM

PAD_ID = 32000  # <|endoftext|>, the tokenizer's pad token


@pytest.fixture(scope="module")
def kit(conformance_dir):
    tiny = conformance_dir / "tiny"
    model = Phi3VForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    cases = json.loads((tiny / "cases.json").read_text())["cases"]
    return tiny, model, {c["id"]: load_file(tiny / f"case_{c['id']}.safetensors") for c in cases}


def image_kwargs(case: dict) -> dict:
    if "pixel_values" not in case:
        return {}
    return {"pixel_values": case["pixel_values"].float(), "image_sizes": case["image_sizes"]}


def test_loading_uses_every_tensor_and_tolerates_wte(conformance_dir, tmp_path) -> None:
    tiny = conformance_dir / "tiny"
    model, info = Phi3VForCausalLM.from_pretrained(tiny, dtype=torch.float32,
                                                   output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    stored = load_file(tiny / "model.safetensors")
    ours = model.state_dict()
    assert set(stored) - set(ours) == {"model.vision_embed_tokens.wte.weight"}
    assert set(ours) == set(stored) - {"model.vision_embed_tokens.wte.weight"}
    for key in ours:
        assert torch.equal(ours[key], stored[key].float()), key

    # the same checkpoint without the duplicate embedding loads too
    shutil.copy(tiny / "config.json", tmp_path / "config.json")
    stored.pop("model.vision_embed_tokens.wte.weight")
    save_file(stored, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = Phi3VForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_logits_and_answer_loss_match_the_reference(kit) -> None:
    _, model, cases = kit
    for name, case in cases.items():
        ids = case["input_ids"]
        # One pass gives both: with the answer appended (prompt masked), the logits at the
        # prompt's positions are those of the prompt alone (causal attention).
        answer = case.get("answer_ids", ids[:, :0])
        full = torch.cat([ids, answer], dim=1)
        labels = torch.cat([torch.full_like(ids, -100), answer], dim=1)
        mask = torch.cat([case["attention_mask"], torch.ones_like(answer)], dim=1)
        with torch.no_grad():
            out = model(input_ids=full, attention_mask=mask,
                        labels=labels if answer.numel() else None, **image_kwargs(case))
        n = ids.shape[1]
        err = (out.logits[0, n - 8 : n] - case["logits_last"]).abs().max().item()
        assert err < 1e-3, f"{name}: logits differ by {err}"
        if answer.numel():
            assert abs(out.loss.item() - case["answer_loss"].item()) < 1e-4, name


def generate(model, ids, mask, images: dict, cache: bool) -> list[list[int]]:
    """Greedy 8 new tokens per row, with the KV cache or by a full forward pass per step."""
    if cache:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                             do_sample=False, use_cache=True, **images)
        return out[:, ids.shape[1]:].tolist()
    new = []
    with torch.no_grad():
        for _ in range(8):
            # left padding: positions count from each row's first real token
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           use_cache=False, **images).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            new.append(token)
            ids = torch.cat([ids, token], dim=1)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
    return torch.cat(new, dim=1).tolist()


@pytest.mark.parametrize("cache", [True, False], ids=["kv_cache", "full_forward"])
def test_greedy_8_matches_the_reference_with_images(kit, cache) -> None:
    _, model, cases = kit
    for name, case in cases.items():
        new = generate(model, case["input_ids"], case["attention_mask"], image_kwargs(case),
                       cache)
        assert new[0] == case["greedy_8"].tolist(), f"{name} (cache={cache})"
        assert new[0][0] == case["logits_last"][-1].argmax().item(), name


def left_padded_batch(cases: list[dict]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The cases as one left-padded batch, as the processor batches for generation: images
    listed row by row, each padded with zero crops to the batch's largest crop count."""
    width = max(c["input_ids"].shape[1] for c in cases)
    ids = torch.stack([F.pad(c["input_ids"][0], (width - c["input_ids"].shape[1], 0),
                             value=PAD_ID) for c in cases])
    mask = torch.stack([F.pad(c["attention_mask"][0], (width - c["attention_mask"].shape[1], 0))
                        for c in cases])
    with_images = [c for c in cases if "pixel_values" in c]
    slots = max(c["pixel_values"].shape[1] for c in with_images)
    pixels = torch.cat([F.pad(c["pixel_values"].float(),
                              (0, 0, 0, 0, 0, 0, 0, slots - c["pixel_values"].shape[1]))
                        for c in with_images])
    sizes = torch.cat([c["image_sizes"].reshape(-1, 2) for c in with_images])
    return ids, mask, {"pixel_values": pixels, "image_sizes": sizes}


def test_a_left_padded_batch_gives_each_case_its_tokens(kit) -> None:
    _, model, cases = kit
    # every case in one batch: one and two images, 1 and 4 crops, text only, 15-775 tokens
    names = sorted(cases)
    ids, mask, images = left_padded_batch([cases[n] for n in names])
    new = generate(model, ids, mask, images, cache=True)
    for name, tokens in zip(names, new, strict=True):
        assert tokens == cases[name]["greedy_8"].tolist(), name
