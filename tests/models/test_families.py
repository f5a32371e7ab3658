"""Qwen2.5-VL, Qwen3-VL, SmolVLM (Idefics3), SmolVLM2 and Phi-4-multimodal through the same
pipeline as Phi-3-vision.

Each family is a tiny random model of transformers' own class, with a tokenizer made here
that has the family's special tokens and chat template, and the family's own processor
(tests/models/test_loading.py and tests/training cover Phi-3-vision the same way).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from productvlm.errors import ProductVLMError
from productvlm.inference import Predictor
from productvlm.models.families import family_of, image_token_id, text_model
from productvlm.models.loading import LoraSpec, load_model
from productvlm.models.merged import save_merged
from productvlm.models.processors import ImageOptions, load_processor
from productvlm.models.scoring import score_continuations
from productvlm.models.tiny_families import save_tiny_family
from productvlm.prompts import chat_parts, render_prompt
from productvlm.training.collate import IGNORE_INDEX, VLMCollator

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "smolvlm", "smolvlm2", "phi4mm"]  # tiny_families names
END = {"qwen2_5_vl": "<|im_end|>", "smolvlm": "<end_of_utterance>", "phi4mm": "<|end|>"}
TEXTS = [f"Product: {a} {b}, Category: {c}, Full Price: {p},290.00"
         for a in ("Medium", "Small", "Check") for b in ("Lola Bag", "Wool Scarf", "Trench")
         for c, p in (("BAGS", 1), ("SCARVES", 2), ("COATS", 3))] * 5


@pytest.fixture(scope="module", params=FAMILIES)
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_family(request.param, tmp_path_factory.mktemp(request.param) / "m", TEXTS,
                            vocab_size=320, hidden_size=64, layers=2, vision_hidden=32,
                            vision_layers=2, rope_theta=20.0, crops=4)


def _family(folder: Path) -> str:
    return family_of(json.loads((folder / "config.json").read_text()) and
                     load_model(folder).config).name


def _rows() -> list[dict]:
    return [{"title": "Medium Lola Bag", "category": "BAGS", "price": 1290.0,
             "image": Image.new("RGB", (150, 90), "tan")},
            {"title": "Check Trench", "category": "COATS", "price": 3290.0,
             "image": Image.new("RGB", (60, 200), "navy")},
            {"title": "Small Wool Scarf", "category": "SCARVES", "price": 290.0,
             "image": Image.new("RGB", (112, 112), "firebrick")}]


def _photos() -> list[Image.Image]:
    return [r["image"] for r in _rows()]


def test_labels_are_exactly_the_answer_and_its_end_tokens(folder: Path) -> None:
    processor = load_processor(folder)
    tok = processor.tokenizer
    batch = VLMCollator(processor)(_rows())  # three photo sizes in one batch
    prompt = render_prompt(tok)
    lead = chat_parts(tok).lead
    for i, row in enumerate(_rows()):
        answer = f"Product: {row['title']}, Category: {row['category']}, Full Price: " \
                 f"{row['price']:,.2f}"
        target = tok(f"{lead}{answer}{chat_parts(tok).tail}", add_special_tokens=False).input_ids
        alone = processor(text=[prompt], images=[[row["image"]]], return_tensors="pt")
        n = alone["input_ids"].shape[1]
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        mask = batch["attention_mask"][i]
        # the prompt as the processor writes it alone, then the target, then padding
        assert ids[:n].tolist() == alone["input_ids"][0].tolist()
        assert ids[n:n + len(target)].tolist() == target
        assert (labels[:n] == IGNORE_INDEX).all()
        assert labels[n:n + len(target)].tolist() == target
        assert (labels[n + len(target):] == IGNORE_INDEX).all()
        assert mask.sum() == n + len(target)
        trained = tok.decode(target)
        assert trained.strip().startswith("Product: ") and END[_family(folder)] in trained
    # the image tokens are never trained on
    image_id = image_token_id(load_model(folder).config)
    assert not (batch["labels"] == image_id).any()


def test_max_length_cuts_answers_and_refuses_to_cut_them_all(folder: Path) -> None:
    processor = load_processor(folder)
    full = VLMCollator(processor)(_rows())
    width = full["input_ids"].shape[1]
    cut = VLMCollator(processor, max_length=width - 3)(_rows())
    assert cut["input_ids"].shape[1] == width - 3
    assert torch.equal(cut["labels"], full["labels"][:, :width - 3])
    shortest_prompt = int((full["labels"] == IGNORE_INDEX).long().cumprod(1).sum(1).min())
    with pytest.raises(ProductVLMError, match="leaves no answer token"):
        VLMCollator(processor, max_length=shortest_prompt - 1)(_rows())


def test_image_size_settings_change_the_tokens_per_photo(folder: Path) -> None:
    name = _family(folder)
    photo = Image.new("RGB", (224, 224), "tan")
    prompt = render_prompt(load_processor(folder).tokenizer)

    def tokens(options: ImageOptions) -> int:
        processor = load_processor(folder, options=options)
        return processor(text=[prompt], images=[[photo]], return_tensors="pt")["input_ids"].shape[1]

    if name == "qwen2_5_vl":
        assert tokens(ImageOptions(max_pixels=28 * 28 * 4)) < tokens(ImageOptions())
        with pytest.raises(ProductVLMError, match="SmolVLM settings"):
            load_processor(folder, options=ImageOptions(image_splitting=True))
        with pytest.raises(ProductVLMError, match="Phi-4-multimodal setting"):
            load_processor(folder, options=ImageOptions(dynamic_hd=4))
    elif name == "phi4mm":  # 224 px: 2 x 2 crops of 112 px, or one
        assert tokens(ImageOptions(dynamic_hd=1)) < tokens(ImageOptions())
        with pytest.raises(ProductVLMError, match="SmolVLM settings"):
            load_processor(folder, options=ImageOptions(image_splitting=True))
    else:
        assert tokens(ImageOptions(image_splitting=True)) > tokens(ImageOptions())
        with pytest.raises(ProductVLMError, match="Qwen-VL settings"):
            load_processor(folder, options=ImageOptions(max_pixels=1000))


def test_lora_targets_and_frozen_tower(folder: Path) -> None:
    fam = family_of(load_model(folder))
    model = load_model(folder, lora=LoraSpec(r=4, alpha=8))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert not any(any(m in n for m in fam.vision_modules) for n in trained)
    assert {n.split(".")[-4] for n in trained} == set(fam.decoder_targets)
    vision = load_model(folder, lora=LoraSpec(r=4, alpha=8, vision=True))
    trained_v = [n for n, p in vision.named_parameters() if p.requires_grad]
    assert any(any(m in n for m in fam.tower) for n in trained_v)  # the encoder's layers
    full = load_model(folder, freeze_vision=True)
    for name, param in full.named_parameters():
        frozen = any(name.startswith(m + ".") for m in fam.tower + fam.frozen)
        assert param.requires_grad != frozen, name
    assert all(p.requires_grad != any(n.startswith(m + ".") for m in fam.frozen)
               for n, p in load_model(folder).named_parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(folder: Path) -> None:
    batch = VLMCollator(load_processor(folder))(_rows())
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # LoRA A's initialisation
        model = load_model(folder, lora=LoraSpec(r=4, alpha=8, dropout=0.0),
                           gradient_checkpointing=checkpointing)
        for n, p in model.named_parameters():  # LoRA B starts at 0: give it a value
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
        model.train()
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                    if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-5, rtol=1e-4)


def test_merged_model_reloads_with_transformers_alone(folder: Path, tmp_path: Path) -> None:
    processor = load_processor(folder)
    model = load_model(folder, lora=LoraSpec(r=4, alpha=8))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    batch = VLMCollator(processor)(_rows())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        adapted = model.eval()(**inputs).logits
    save_merged(model, processor, tmp_path / "merged", base=folder)
    torch.save(inputs, tmp_path / "inputs.pt")
    # a fresh interpreter that imports transformers only: the family's own Hub format
    code = (
        "import sys, torch, transformers\n"
        f"m = transformers.{family_of(model).auto_class}.from_pretrained(sys.argv[1])\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert tok.chat_template, 'no chat template'\n"
        "assert not any('lora' in k for k in m.state_dict())\n"
        "assert 'productvlm' not in sys.modules\n"
        f"torch.save(m.eval()(**inputs).logits.detach(), {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "merged")], check=True,
                   cwd=tmp_path)
    config = json.loads((tmp_path / "merged" / "processor_config.json").read_text())
    assert config["processor_class"] == type(processor).__name__
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), adapted, atol=1e-5,
                               rtol=1e-4)


def test_batched_left_padded_constrained_answers_equal_one_at_a_time(folder: Path) -> None:
    model, processor = load_model(folder).eval(), load_processor(folder)
    cats = ["BAGS", "COATS", "SCARVES"]
    batched = Predictor(model, processor, categories=cats, batch_size=3, max_new_tokens=40)
    alone = Predictor(model, processor, categories=cats, batch_size=1, max_new_tokens=40)
    photos = _photos()
    got = batched.predict(photos)
    assert [p.raw for p in got] == [p.raw for p in alone.predict(photos)]
    assert all(p.category in cats for p in got)  # random weights, constrained answers
    assert all(p.title for p in got)
    # the answer stopped at the family's end token, which is not in the text
    assert all(END[_family(folder)] not in p.raw for p in got)


def naive(model, processor, image, prefix: list[int], cand: list[int]) -> float:
    """log p(cand | prompt + prefix) with one plain forward pass, no cache, no padding."""
    batch = processor(text=[render_prompt(processor.tokenizer)], images=[[image]],
                      return_tensors="pt")
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([prefix + cand])], 1)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    if "mm_token_type_ids" in batch:
        batch["mm_token_type_ids"] = torch.nn.functional.pad(
            batch["mm_token_type_ids"], (0, len(prefix) + len(cand)))
    with torch.no_grad():
        logits = model(**batch).logits[0].float()
    logp = logits[-len(cand) - 1:-1].log_softmax(-1)
    return logp.gather(-1, torch.tensor(cand)[:, None]).sum().item()


def test_packed_price_scores_equal_one_forward_per_candidate(folder: Path) -> None:
    """On the generation's KV cache, with left padding and (Qwen) multimodal rope positions."""
    model, processor = load_model(folder).eval(), load_processor(folder)
    with torch.no_grad():  # sharp attention: a position off by one changes the scores
        for name, param in text_model(model).named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                param.mul_(12)
    photos = [Image.new("RGB", (300, 200), (200, 40, 40)), Image.new("RGB", (90, 160), "navy")]
    batch = processor(text=[render_prompt(processor.tokenizer)] * 2,
                      images=[[im] for im in photos], return_tensors="pt", padding=True,
                      padding_side="left")
    specials = sorted(set(processor.tokenizer.all_special_ids))  # no stray image token
    out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         return_dict_in_generate=True, suppress_tokens=specials)
    width = batch["input_ids"].shape[1]
    gen = out.sequences[:, width:]
    keep = torch.zeros(2, out.cache.get_seq_length(), dtype=torch.bool)
    keep[:, :width] = batch["attention_mask"].bool()
    keep[:, width:width + 4] = True
    enc = processor.tokenizer
    cands = [enc(t, add_special_tokens=False).input_ids for t in ("1,290.", "12,", "Bag")]
    groups = [[([int(gen[b, 3])], cands)] for b in range(2)]
    got = score_continuations(model, out.cache, keep, groups)
    for b in range(2):
        prefix = gen[b, :4].tolist()
        want = [naive(model, processor, photos[b], prefix, c) for c in cands]
        torch.testing.assert_close(got[b][0], torch.tensor(want), atol=2e-4, rtol=1e-4)


def test_image_features_are_the_photo_own_and_batch_independent(folder: Path) -> None:
    model, processor = load_model(folder).eval(), load_processor(folder)
    predictor = Predictor(model, processor, batch_size=3)
    photos = _photos()
    together = predictor.image_features(photos)
    apart = [Predictor(model, processor, batch_size=1).image_features([p])[0] for p in photos]
    assert together.shape == (3, model.config.get_text_config().hidden_size)
    torch.testing.assert_close(torch.tensor(together), torch.tensor(apart), atol=1e-4,
                               rtol=1e-4)
    assert not torch.allclose(torch.tensor(together[0]), torch.tensor(together[1]))


def test_the_warm_up_joins_photos_as_the_processor_batches_them(folder: Path) -> None:
    name = _family(folder)
    fam = family_of(load_model(folder).config)
    options = ImageOptions(image_splitting=True) if name == "smolvlm" else ImageOptions()
    images = load_processor(folder, options=options).image_processor
    photos = [Image.new("RGB", (300, 120), "tan"), Image.new("RGB", (90, 90), "navy"),
              Image.new("RGB", (120, 260), "firebrick")]
    together = images([[p] for p in photos], return_tensors="pt")
    apart = [images([[p]], return_tensors="pt") for p in photos]
    for key, value in together.items():
        if isinstance(value, torch.Tensor):
            joined = fam.join_photos([{key: a[key]} for a in apart])[key]
            torch.testing.assert_close(joined, value)
