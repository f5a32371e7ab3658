"""Model conformance with the reference Phi-3-vision, on ../shared/phi3v-conformance/tiny.

Uses the stored ``input_ids`` / ``pixel_values`` / ``image_sizes`` of each case, so it does not
depend on the processor (tests/models/test_phi3v_processor.py checks that side).

About ``greedy_8``: for the cases with images the stored tokens are not what the reference
model generates from those inputs. Its image embedding clamps ``input_ids`` *in place*
(``clamp_min_(0)``), so the kit's generate() call received ids whose image positions already
held token 0, with no image positions left: a text-only run. Two facts show it: the first stored
token is not the argmax of the stored ``logits_last`` (which were computed with the images),
and the eight stored tokens are reproduced exactly, with the KV cache, from the clamped ids.
This file therefore checks (a) the stored ``greedy_8`` exactly on the input the reference
decoded (the text-only case as is; image cases with image positions set to 0), and (b) that
our generation with the images starts at the stored logits' argmax and that the KV cache
changes nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import productvlm.models.phi3v  # noqa: F401  registers the Auto classes
from productvlm.models.phi3v import Phi3VForCausalLM


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


def test_greedy_8_matches_the_reference_decoding(kit) -> None:
    _, model, cases = kit
    for name, case in cases.items():
        # what the reference's generate() received: image positions already clamped to 0
        ids = case["input_ids"].clamp(min=0)
        out = model.generate(input_ids=ids, attention_mask=case["attention_mask"],
                             max_new_tokens=8, do_sample=False, use_cache=True)
        assert out[0, ids.shape[1]:].tolist() == case["greedy_8"].tolist(), name


@pytest.mark.parametrize("name", ["crops1_two", "crops4_img3"])
def test_generation_with_images_follows_the_reference_logits(kit, name) -> None:
    _, model, cases = kit
    case = cases[name]
    ids = case["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=case["attention_mask"], max_new_tokens=8,
                         do_sample=False, use_cache=True, **image_kwargs(case))
    new = out[0, ids.shape[1]:]
    assert new[0].item() == case["logits_last"][-1].argmax().item()
    # the KV cache changes nothing: one pass over prompt + answer picks the same tokens
    with torch.no_grad():
        logits = model(input_ids=out, **image_kwargs(case)).logits[0, -9:-1]
    assert logits.argmax(-1).tolist() == new.tolist()
    # and the images matter: it is not the text-only continuation the reference stored
    assert new.tolist() != case["greedy_8"].tolist()
