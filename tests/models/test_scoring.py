"""Packed candidate scoring on the generation's KV cache equals scoring each candidate alone."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from productvlm.models.loading import load_model
from productvlm.models.processors import load_processor
from productvlm.models.scoring import score_continuations
from productvlm.prompts import render_prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from productvlm.models.phi3v.tiny import save_tiny_model
    from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer([f"Product: Lola Bag, Category: BAGS, Full Price: {p},290.00"
                                for p in range(1, 9)] * 10, vocab_size=300)
    folder = save_tiny_model(tmp_path_factory.mktemp("score") / "tiny", tokenizer=tok,
                             num_crops=4)
    torch.manual_seed(0)
    return load_model(folder, dtype="fp32").eval(), load_processor(folder)


def naive(model, processor, image, prefix_ids: list[int], cand: list[int]) -> float:
    """log p(cand | prompt + prefix) with one plain forward pass, no cache, no padding."""
    prompt = render_prompt(processor.tokenizer)
    batch = processor(text=[prompt], images=[[image]], return_tensors="pt")
    ids = torch.cat([batch["input_ids"], torch.tensor([prefix_ids + cand])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=batch["pixel_values"],
                       image_sizes=batch["image_sizes"]).logits[0].float()
    n = len(cand)
    logp = logits[-n - 1:-1].log_softmax(-1)
    return logp.gather(-1, torch.tensor(cand)[:, None]).sum().item()


def _prompt_cache(model, processor, image) -> tuple:
    """(generation output with its cache, the prompt's positions to keep, the root token)
    for one photo: the prompt alone is the prefix the candidates follow."""
    prompt = render_prompt(processor.tokenizer)
    batch = processor(text=[prompt], images=[[image]], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=2, do_sample=False, use_cache=True,
                         return_dict_in_generate=True, min_new_tokens=2)
    keep = torch.zeros(1, out.cache.get_seq_length(), dtype=torch.bool)
    keep[:, :batch["input_ids"].shape[1]] = True
    return out, keep, [int(batch["input_ids"][0, -1])]


@pytest.mark.parametrize("matched", [5, 0])
def test_packed_scores_equal_one_forward_per_candidate(tiny, matched: int) -> None:
    model, processor = tiny
    images = [Image.new("RGB", (300, 200), (200, 40, 40)),
              Image.new("RGB", (90, 160), (20, 90, 200))]
    prompt = render_prompt(processor.tokenizer)
    batch = processor(text=[prompt] * 2, images=[[im] for im in images], return_tensors="pt",
                      padding_side="left")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=True,
                         return_dict_in_generate=True, min_new_tokens=8)
    prompt_len = batch["input_ids"].shape[1]
    gen = out.sequences[:, prompt_len:]
    cached = out.cache.get_seq_length()
    # keep: the prompt's real tokens and the first `matched` generated ones
    keep = torch.zeros(2, cached, dtype=torch.bool)
    keep[:, :prompt_len] = batch["attention_mask"].bool()
    keep[:, prompt_len:prompt_len + matched] = True
    last = [int(torch.where(keep[b])[0][-1]) for b in range(2)]
    full = torch.cat([batch["input_ids"], gen], dim=1)
    extra = [[7, 9], []]  # prefix tokens beyond what the cache holds
    lead = [[int(full[b, last[b]])] + extra[b] for b in range(2)]
    # shared beginnings (a token tree), a candidate that is a prefix of another, a repeat
    candidates = [[[5, 6, 7], [8], [5, 6, 9, 10], [5, 6]], [[11, 12], [13, 14, 15, 16, 17],
                                                          [11, 12]]]
    # a second group on row 0: another answer prefix than the generated one (two tokens more)
    other = [[3, 4], [[5, 6, 7], [9]]]
    groups = [[(lead[0], candidates[0]), (lead[0] + other[0], other[1])],
              [(lead[1], candidates[1])]]
    got = score_continuations(model, out.cache, keep, groups)
    assert out.cache.get_seq_length() == cached  # left as it was found
    for b in range(2):
        prefix = gen[b, :matched].tolist() + extra[b]
        want = [naive(model, processor, images[b], prefix, c) for c in candidates[b]]
        assert torch.allclose(got[b][0], torch.tensor(want), atol=1e-4), (b, got[b], want)
    want = [naive(model, processor, images[0], gen[0, :matched].tolist() + extra[0] + other[0],
                  c) for c in other[1]]
    assert torch.allclose(got[0][1], torch.tensor(want), atol=1e-4)


def test_pruning_follows_the_likely_beginnings_and_bounds_the_rest(tiny) -> None:
    model, processor = tiny
    image = Image.new("RGB", (200, 200), (90, 140, 40))
    out, keep, root = _prompt_cache(model, processor, image)
    cands = [[a, b, c] for a in (5, 6, 7) for b in (8, 9) for c in (10, 11)]
    full = score_continuations(model, out.cache, keep, [[(root, cands)]])[0][0]
    same = score_continuations(model, out.cache, keep, [[(root, cands)]], prune=1e9,
                               probe=1)[0][0]
    assert torch.allclose(full, same, atol=1e-5)
    pruned = score_continuations(model, out.cache, keep, [[(root, cands)]], prune=0.0,
                                 probe=1)[0][0]
    # only the likeliest first token is followed; its candidates are exact
    best = max((5, 6, 7), key=lambda a: torch.logsumexp(full[[c[0] == a for c in cands]], 0))
    followed = torch.tensor([c[0] == best for c in cands])
    assert torch.allclose(pruned[followed], full[followed], atol=1e-5)
    # the candidates of any other first token share that token's probability: at least
    # their true mass (an upper bound: the tail is never made lighter than it is)
    for a in (5, 6, 7):
        if a == best:
            continue
        alike = torch.tensor([c[0] == a for c in cands])
        assert torch.allclose(pruned[alike], pruned[alike][0])  # shared evenly
        assert torch.logsumexp(pruned[alike], 0) >= torch.logsumexp(full[alike], 0), a


def test_a_lead_running_through_another_groups_candidates_is_scored(tiny) -> None:
    """One group's lead walks the nodes deep in another group's candidate (an answer whose
    title ran on into "... Full Price: 1,8", the listing's candidates "1,800."): with
    pruning, those nodes are still scored before the lead's later ones, and every score is
    the plain forward pass's."""
    model, processor = tiny
    image = Image.new("RGB", (200, 200), (40, 40, 160))
    out, keep, root = _prompt_cache(model, processor, image)
    deep = [5, 6, 7, 8, 9]  # a candidate of the first group ...
    groups = [[(root, [deep, [5, 11]]), (root + deep + [12], [[13], [14, 15]])]]  # ... a lead
    got = score_continuations(model, out.cache, keep, groups, prune=9.0, probe=2)[0]
    want = [naive(model, processor, image, [], c) for c in (deep, [5, 11])]
    assert torch.allclose(got[0], torch.tensor(want), atol=1e-4)
    want = [naive(model, processor, image, deep + [12], c) for c in ([13], [14, 15])]
    assert torch.allclose(got[1], torch.tensor(want), atol=1e-4)
