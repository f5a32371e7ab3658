"""productvlm.constrained: the answer-format state machine, on real tokenizers (no model needed).

Three vocabularies: Phi-3's real SentencePiece one (from the conformance kit), and two built
here with the `tokenizers` library: a byte-level BPE (GPT-2 style, multi-character tokens
that run across segment boundaries) and a SentencePiece-style "▁" BPE.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from productvlm.answer import ProductFields, format_answer, parse_answer
from productvlm.constrained import AnswerGrammar, TokenVocab, answer_template, template_regex
from productvlm.constrained.template import PRICE_RESERVE, Number
from productvlm.prompts import END

CATEGORIES = ["BAGS", "BAG CHARMS", "SHOES", "WOMEN'S COATS", "SCARVES & SHAWLS"]
PRODUCTS = [
    ProductFields("Medium Lola Bag", "BAGS", 2290.0),
    ProductFields("Check Cotton Trench Coat, Long", "WOMEN'S COATS", 12500.5),
    ProductFields("Leather Charm", "BAG CHARMS", 390.0),
    ProductFields('The "Olympia" Shoulder Bag', "BAGS", 1.0),
    ProductFields("Vintage Check Scarf", "SCARVES & SHAWLS", 70000.0),
]
CORPUS = [format_answer(p, f) for p in PRODUCTS for f in ("seed", "json")] + [
    "What is shown in this image? A bag, a coat, a scarf and some shoes.",
    "Prices: 1,290.00 2,450.00 990.00 12,500.50",
] * 20
SPECIALS = ["<unk>", "<s>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<unk>",
        additional_special_tokens=["<|end|>", "<|user|>", "<|assistant|>"],
        clean_up_tokenization_spaces=False,
    )


def _byte_level() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return _wrap(tok)


def _metaspace() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(CORPUS)) | set("0123456789") | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return _wrap(tok)


_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}


@pytest.fixture(scope="module", params=["phi3", "bytelevel", "metaspace"])
def tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    name = request.param
    if name not in _TOKENIZERS:
        if name == "phi3":
            hub = Path(request.getfixturevalue("conformance_dir")) / "hub"
            _TOKENIZERS[name] = AutoTokenizer.from_pretrained(hub, trust_remote_code=False)
        else:
            _TOKENIZERS[name] = _byte_level() if name == "bytelevel" else _metaspace()
    return _TOKENIZERS[name]


_VOCABS: dict[int, TokenVocab] = {}


def vocab_of(tok: PreTrainedTokenizerFast) -> TokenVocab:
    if id(tok) not in _VOCABS:
        _VOCABS[id(tok)] = TokenVocab.from_tokenizer(tok)
    return _VOCABS[id(tok)]


def run(grammar: AnswerGrammar, pick, max_new: int, width: int, proc=None) -> list[int]:
    """Generate with the grammar's processor; ``pick(step, scores)`` chooses each token."""
    proc = proc or grammar.logits_processor(max_new)
    ids = torch.zeros((1, 3), dtype=torch.long)
    out: list[int] = []
    for step in range(max_new):
        scores = proc(ids, torch.zeros(1, width))
        allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
        assert allowed, f"no token allowed after {out}"
        t = pick(step, allowed)
        out.append(t)
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        if t == grammar.vocab.end_id:
            break
    return out


def test_surfaces_keep_word_boundaries(tok: PreTrainedTokenizerFast) -> None:
    v = vocab_of(tok)
    ids = tok("Lola Bag, Category", add_special_tokens=False).input_ids
    # SentencePiece adds a leading "▁" to the first word, byte-level BPE does not
    assert "".join(v.surfaces[i] for i in ids) in ("Lola Bag, Category", " Lola Bag, Category")
    for special in SPECIALS:
        assert v.surfaces[tok.convert_tokens_to_ids(special)] is None
    assert v.end_id == tok.convert_tokens_to_ids(END)


@pytest.mark.parametrize("fmt", ["seed", "json"])
def test_training_tokenization_is_allowed_step_by_step(tok: PreTrainedTokenizerFast,
                                                       fmt: str) -> None:
    """The tokens a fine-tuned model learned (targets tokenized alone, as the processor
    does) are allowed at every step: the constraint never fights a good model."""
    g = AnswerGrammar(vocab_of(tok), answer_template(fmt, CATEGORIES))
    for product in PRODUCTS:
        target = tok(format_answer(product, fmt), add_special_tokens=False).input_ids
        target.append(g.vocab.end_id)
        got = run(g, lambda step, allowed, t=target: t[step] if t[step] in allowed else -1,
                  max_new=64, width=len(tok))
        assert got == target, (tok.convert_ids_to_tokens(target), got)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Product: Lola Bag, Category: BAGS, Full Price: 2,290.00", True),
        (" Product: Lola, Bag, Category: BAG CHARMS, Full Price: 5.00", True),
        ("Product: Lola, Category: BAGS, Full Price: 5", False),  # cut after a digit
        ("Product: Lola, Category: BAGS, Full Price: 2290.00", False),  # not grouped
        ("Product: Lola, Category: BAGS, Full Price: 22,90.00", False),
        ("Product: Lola, Category: BAGS, Full Price: 0.50", True),
        # a title may not run into the next field: "Lola, Category: BAGS" is no title
        ("Product: Lola, Category: BAGS, Category: BAGS, Full Price: 1.00", False),
        ("Product: Lola, Category: BAGS, Full Price: 1,80000, Category: BAGS, Full Price: 1.00",
         False),
        ("Product: Lola, Category BAGS, Category: BAGS, Full Price: 1.00", True),
        ("Product: Lola Bag, Category: BELTS, Full Price: 2,290.00", False),  # unseen category
        ("Product: Lola\nBag, Category: BAGS, Full Price: 2,290.00", False),  # newline
        ("Product: , Category: BAGS, Full Price: 2,290.00", False),  # empty title
        ("Product: Lola, Category: BAGS, Full Price: 1.2.3", False),
        ("Product: Lola, Category: BAGS, Full Price: 0.00", False),  # not a positive price
        ("Product: Lola, Category: BAGS, Price: 12", False),
    ],
)
def test_seed_accepts(tok: PreTrainedTokenizerFast, text: str, ok: bool) -> None:
    g = AnswerGrammar(vocab_of(tok), answer_template("seed", CATEGORIES))
    assert g.accepts(text) is ok
    if ok:
        assert parse_answer(text + END, "seed").ok
    # vLLM's structured output: the same template as a regex accepts the same answers
    assert bool(re.fullmatch(template_regex(answer_template("seed", CATEGORIES)), text)) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"title": "Lola", "category": "BAGS", "price": 2290.0}', True),
        ('{"title": "Lola", "category": "BAGS", "price": 0.5}', True),
        ('{"title": "Lola", "category": "BAGS", "price": 012}', False),  # not JSON
        ('{"title": "Lola", "category": "BAGS", "price": 2,290}', False),
        ('{"title": "Lo"la", "category": "BAGS", "price": 1}', False),
        ('{"title": "Lola", "category": "BELTS", "price": 1}', False),
    ],
)
def test_json_accepts(tok: PreTrainedTokenizerFast, text: str, ok: bool) -> None:
    g = AnswerGrammar(vocab_of(tok), answer_template("json", CATEGORIES))
    assert g.accepts(text) is ok
    assert bool(re.fullmatch(template_regex(answer_template("json", CATEGORIES)), text)) is ok
    if ok:
        assert json.loads(text)["title"] == "Lola"


def test_tokens_spanning_a_boundary_are_allowed(tok: PreTrainedTokenizerFast) -> None:
    v = vocab_of(tok)
    g = AnswerGrammar(v, answer_template("seed", CATEGORIES))
    after_literal = g.consume(g.initial, "Product:")
    allowed = g.allowed(after_literal, 60)
    spanning = [i for i, s in enumerate(v.surfaces) if s and s[0] == " " and len(s) > 1
                and s[1:].isalpha()]
    assert spanning and all(allowed[i] for i in spanning)  # " " + the title's first word
    newline = [i for i, s in enumerate(v.surfaces) if s and "\n" in s]
    assert not any(allowed[i] for i in newline)
    # In JSON the title is closed by its quote: after it, only category prefixes, or tokens
    # running past one.
    g = AnswerGrammar(v, answer_template("json", CATEGORIES))
    allowed = g.allowed(g.consume(g.initial, '{"title": "Lola", "category":'), 60)
    ok = {s for i, s in enumerate(v.surfaces) if allowed[i]}
    assert " " in ok  # the literal's last character alone
    quoted = [' "' + c for c in CATEGORIES]
    assert all(any(q.startswith(s) or s.startswith(q) for q in quoted) for s in ok), sorted(ok)
    spanning = {s for s in v.surfaces if s and len(s) > 2 and any(q.startswith(s) for q in quoted)}
    assert spanning <= ok  # ' "B', ' "BAG'...: running into the category, where they exist


@pytest.mark.parametrize("fmt", ["seed", "json"])
@pytest.mark.parametrize("max_new", [64, 30])
def test_random_choices_always_parse(tok: PreTrainedTokenizerFast, fmt: str,
                                     max_new: int) -> None:
    """Whatever the model prefers, the answer parses, its category is a training one, and it
    ends with <|end|> within max_new_tokens (the budget forces the end in time)."""
    g = AnswerGrammar(vocab_of(tok), answer_template(fmt, CATEGORIES))
    rng = random.Random(0)
    for _ in range(15):
        ids = run(g, lambda step, allowed: rng.choice(allowed), max_new=max_new, width=len(tok))
        assert ids[-1] == g.vocab.end_id and len(ids) <= max_new
        parsed = parse_answer(tok.decode(ids), fmt)
        assert parsed.ok, (tok.decode(ids), parsed.error)
        assert parsed.category in CATEGORIES


def test_free_category_without_training_labels(tok: PreTrainedTokenizerFast) -> None:
    g = AnswerGrammar(vocab_of(tok), answer_template("seed", None))
    rng = random.Random(1)
    for _ in range(10):
        ids = run(g, lambda step, allowed: rng.choice(allowed), max_new=48, width=len(tok))
        parsed = parse_answer(tok.decode(ids), "seed")
        assert parsed.ok and "," not in parsed.category, tok.decode(ids)


def test_random_free_choices_do_not_parse(tok: PreTrainedTokenizerFast) -> None:
    """The same random choices without the constraint: almost never a parseable answer."""
    rng = random.Random(0)
    answers = [tok.decode([rng.randrange(len(tok)) for _ in range(30)]) for _ in range(20)]
    assert sum(parse_answer(a, "seed").ok for a in answers) == 0


def test_budget_too_small_is_refused(tok: PreTrainedTokenizerFast) -> None:
    g = AnswerGrammar(vocab_of(tok), answer_template("seed", CATEGORIES))
    with pytest.raises(ValueError, match="max_new_tokens=3 is too few"):
        g.logits_processor(3)


def test_model_vocab_wider_than_tokenizer(tok: PreTrainedTokenizerFast) -> None:
    """Phi-3's embedding has 32,064 rows for 32,045 tokens: extra ids are never allowed."""
    g = AnswerGrammar(vocab_of(tok), answer_template("seed", CATEGORIES))
    scores = g.logits_processor(64)(torch.zeros((2, 3), dtype=torch.long),
                                    torch.zeros(2, len(tok) + 19))
    assert scores.shape == (2, len(tok) + 19)
    assert torch.isinf(scores[:, len(tok):]).all()
    assert torch.isfinite(scores).any(dim=1).all()


def test_batched_masks_are_rows_of_one_table(tok: PreTrainedTokenizerFast) -> None:
    """Three answers on different paths: each row of the processed scores is that row's own
    mask (what ``allowed`` says for its states), picked from the grammar's one table; a
    second pass over the same paths adds no row to the table."""
    g = AnswerGrammar(vocab_of(tok), answer_template("seed", CATEGORIES))
    for run_no in range(2):
        rngs = [random.Random(k) for k in range(3)]
        proc, ids = g.logits_processor(40), torch.zeros((3, 2), dtype=torch.long)
        rows_before = len(g._mask_rows)
        for step in range(40):
            scores = proc(ids, torch.zeros(3, len(tok)))
            for b in range(3):
                expected = g.allowed(proc.states[b], 40 - step)
                assert torch.equal(torch.isfinite(scores[b]), expected), (run_no, step, b)
            picks = [rng.choice(torch.isfinite(scores[b]).nonzero().flatten().tolist())
                     for b, rng in enumerate(rngs)]
            ids = torch.cat([ids, torch.tensor(picks)[:, None]], dim=1)
        table = g.mask_table(torch.device("cpu"), len(tok))
        assert table.shape == (len(g._mask_rows), len(tok)) and len(g._mask_rows) > 3
        if run_no == 1:
            assert len(g._mask_rows) == rows_before  # the same paths: the same masks


def test_unspellable_category_is_dropped(tok: PreTrainedTokenizerFast) -> None:
    v = vocab_of(tok)
    odd = "\u2603\u2604"  # snowman and comet: no whole-character token in these vocabularies
    if any(c in s for s in v.surfaces if s for c in odd):
        pytest.skip("vocabulary spells the odd characters")
    g = AnswerGrammar(v, answer_template("seed", ["BAGS", odd]))
    assert g.t[3].options == ("BAGS",)
    with pytest.raises(ValueError, match="cannot spell"):
        AnswerGrammar(v, answer_template("seed", [odd]))


TITLE_ALPHABET = "".join(sorted({c for p in PRODUCTS for c in p.title if c not in ",0123456789"}))


def _greedy_for_long_fields(tok: PreTrainedTokenizerFast, g: AnswerGrammar):
    """A model that wants to go on: in the title the longest allowed token that is not a
    separator, in the price digits before anything else (the noise photo's failure)."""
    surfaces, in_price = g.vocab.surfaces, []

    def pick(step: int, allowed: list[int]) -> int:
        text = [surfaces[t] or "" for t in allowed]
        digits = [t for t, s in zip(allowed, text, strict=True) if s and s.isdigit()]
        if digits:
            in_price.append(True)
            return max(digits, key=lambda t: (len(surfaces[t]), surfaces[t]))
        commas = [t for t, s in zip(allowed, text, strict=True) if s == ","]
        if in_price and commas:
            return commas[0]
        words = [t for t, s in zip(allowed, text, strict=True)
                 if s and "Category" not in s and "," not in s and s.strip()]
        return max(words or allowed, key=lambda t: (len(surfaces[t] or ""), -t))
    return pick


@pytest.mark.parametrize("fmt", ["seed", "json"])
@pytest.mark.parametrize("max_new", [64, 40])
def test_no_field_is_cut_by_a_long_title(tok: PreTrainedTokenizerFast, fmt: str,
                                          max_new: int) -> None:
    """A title bounded by the training titles (their characters and longest length) cannot
    run into digits and commas, and leaves the price room for a whole price: never one digit
    after a title that ate the budget."""
    longest = max(len(p.title) for p in PRODUCTS)
    template = answer_template(fmt, CATEGORIES, title_max_chars=longest,
                               title_alphabet=TITLE_ALPHABET)
    g = AnswerGrammar.within(vocab_of(tok), template, max_new)
    greedy, room = _greedy_for_long_fields(tok, g), []

    def pick(step: int, allowed: list[int]) -> int:
        t = greedy(step, allowed)
        at = next(i for i, seg in enumerate(g.t) if isinstance(seg, Number))
        if not room and any(len(s) == 1 or s[1] >= at for s in g.advance(proc.states[0], t)):
            room.append(max_new - step)  # tokens left for the price, this one included
        return t

    proc = g.logits_processor(max_new)
    ids = run(g, pick, max_new=max_new, width=len(tok), proc=proc)
    text = tok.decode(ids)
    parsed = parse_answer(text, fmt)
    assert ids[-1] == g.vocab.end_id and parsed.ok, text
    assert set(parsed.title) <= set(TITLE_ALPHABET) | {" "}, parsed.title
    assert "Category:" not in parsed.title
    assert len(parsed.title) <= longest + max(len(s or "") for s in g.vocab.surfaces), text
    number = next(seg for seg in g.t if isinstance(seg, Number))
    assert number.reserve == PRICE_RESERVE and room and room[0] >= number.reserve + 1, text
    if fmt == "seed":
        assert re.search(r"Full Price: [1-9]\d{0,2}(,\d{3})*\.\d\d$", text.split(END)[0]), text


def test_the_reserve_gives_way_to_a_short_budget(tok: PreTrainedTokenizerFast) -> None:
    """max_new_tokens too short to reserve a long price still gets answers (whole ones)."""
    template = answer_template("seed", CATEGORIES)
    tight = AnswerGrammar(vocab_of(tok), template).need(
        AnswerGrammar(vocab_of(tok), template).initial) - 3
    g = AnswerGrammar.within(vocab_of(tok), template, tight)
    assert g.need(g.initial) <= tight
    rng = random.Random(2)
    ids = run(g, lambda step, allowed: rng.choice(allowed), max_new=tight, width=len(tok))
    assert parse_answer(tok.decode(ids), "seed").ok


@pytest.mark.parametrize("fmt", ["seed", "json"])
@pytest.mark.parametrize("alphabet", [None, "Lola Bag,"])
def test_regex_accepts_what_the_automaton_accepts(tok: PreTrainedTokenizerFast, fmt: str,
                                                  alphabet: str | None) -> None:
    """On 3,000 strings spliced from the format's own pieces (titles that hold commas, parts
    of the next field's literal, quotes, bad prices), the regex given to vLLM and the token
    automaton agree on every one (titles under the soft cap, which only the regex makes
    hard)."""
    template = answer_template(fmt, CATEGORIES, title_alphabet=alphabet)
    g, rx = AnswerGrammar(vocab_of(tok), template), re.compile(template_regex(template))
    if fmt == "seed":
        heads, mids = ["Product: ", " Product: ", "Product:  ", ""], [", Category: ", ", Cat",
                                                                    ", ", ",", ", Category"]
        prices = ["2,290.00", "0.50", "0.00", "22,90.00", "1,234,567.00", "12.5", "7.00"]
        tail = ", Full Price: "
    else:
        heads, mids = ['{"title": "', ' {"title": "', '{"title":"'], ['", "category": "',
                                                                      '", "cat', '"', '\\"']
        prices = ["2290.0", "0.5", "0", "012", "2,290", "7", "0.05"]
        tail = '", "price": '
    words = ["Lola", "Bag", "Lo", "la", "a", " ", ",", "B", "AGS"]
    rng = random.Random(0)
    for _ in range(3000):
        title = "".join(rng.choice(words + mids) for _ in range(rng.randint(0, 5)))
        text = (rng.choice(heads) + title + rng.choice(mids) + rng.choice(CATEGORIES + ["BELTS"])
                + rng.choice([tail, tail[:-1]]) + rng.choice(prices) + ("}" if fmt == "json"
                                                                         else ""))
        assert bool(rx.fullmatch(text)) is g.accepts(text), text
