"""The answer format's NFA over token surface strings, and the logits processor that masks
every token leaving it (see the package docstring for how and why).

>>> g = AnswerGrammar(TokenVocab.from_tokenizer(tok), answer_template("seed", ["BAGS"]))
>>> model.generate(**inputs, logits_processor=[g.logits_processor(64)])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from productvlm.constrained.template import (
    JSON_FINAL,
    JSON_NUM,
    SEED_FINAL,
    SEED_NUM,
    Free,
    Lit,
    Number,
    Segment,
)
from productvlm.constrained.vocab import TokenVocab

# ("L", seg, typed) | ("F", seg, n, in_escape, m) | ("N", seg, q, nonzero, n) | ("E", seg) | ("D",)
# (m: how much of the literal after a free text its last characters spell; at all of it the
# text would run into the next field, which it may not)
State = tuple
DONE: State = ("D",)
INF = 10**6


@dataclass
class _Parts:
    """The tokens one NFA state allows, each with the fewest tokens still needed after it.

    ``bulk``: a vectorised mask whose tokens all leave at most ``bulk_need`` tokens to go;
    ``exact``: token id -> tokens needed after it, for the few tokens checked one by one.
    """

    bulk: np.ndarray | None
    bulk_need: int
    exact: dict[int, int]


class AnswerGrammar:
    """The NFA of an answer template over a tokenizer's surface strings.

    >>> g = AnswerGrammar(TokenVocab.from_tokenizer(tok), answer_template("seed", ["BAGS"]))
    >>> g.accepts("Product: Lola Bag, Category: BAGS, Full Price: 2,290.00")  # doctest: +SKIP
    True
    """

    def __init__(self, vocab: TokenVocab, template: tuple[Segment, ...]) -> None:
        self.vocab = vocab
        self.t = tuple(self._spellable(seg) for seg in template)
        # per free text, the literal it may not hold (it would run into the next field)
        self._stops = {i: self._stop(i) for i, seg in enumerate(self.t) if isinstance(seg, Free)}
        self._completing: dict[tuple[int, int], np.ndarray] = {}
        self._prefixes = {i: {o[:k] for o in seg.options for k in range(len(o) + 1)}
                          for i, seg in enumerate(self.t) if isinstance(seg, Lit)}
        self._need: dict[State, int] = {}
        self._parts: dict[State, _Parts] = {}
        # every distinct mask once, numbered in order of first use: the rows of the table
        # that the logits processor keeps on the device (:meth:`mask_table`)
        self._mask_ids: dict[tuple, int] = {}
        self._mask_rows: list[np.ndarray] = []
        self._tables: dict[tuple, torch.Tensor] = {}
        self._numeric = np.array([i for i, s in enumerate(vocab.surfaces)
                                  if s and all(c in "0123456789.," for c in s)], dtype=np.int64)
        self._backslashed = [i for i, s in enumerate(vocab.surfaces) if s and "\\" in s]
        self._nonspace = np.array([bool(s) and not s[0].isspace() for s in vocab.surfaces])
        # one token can raise the need by at most the length of a literal (spelt by characters)
        self.margin = max(len(o) for seg in self.t if isinstance(seg, Lit) for o in seg.options) + 2
        self.initial = self.closure([self.start(0)])

    @classmethod
    def within(cls, vocab: TokenVocab, template: tuple[Segment, ...],
               max_new_tokens: int) -> AnswerGrammar:
        """The grammar of ``template``, its price's reserve lowered as far as it must be for
        an answer to fit in ``max_new_tokens`` (a short budget still gets a whole price)."""
        grammar = cls(vocab, template)
        over = grammar.need(grammar.initial) - max_new_tokens
        number = next((seg for seg in template if isinstance(seg, Number)), None)
        if over > 0 and number is not None and number.reserve:
            smaller = replace(number, reserve=max(0, number.reserve - over))
            grammar = cls(vocab, tuple(smaller if seg is number else seg for seg in template))
        return grammar

    def _stop(self, i: int) -> str | None:
        nxt = self.t[i + 1] if i + 1 < len(self.t) else None
        if isinstance(nxt, Lit) and len(nxt.options) == 1 and self.t[i].ok(nxt.options[0][0]):
            return nxt.options[0]
        return None  # JSON: the text cannot hold the closing quote anyway

    def _progress(self, i: int, m: int, c: str) -> int:
        """The new ``m`` of a free text after ``c`` (KMP over the short literal)."""
        stop = self._stops[i]
        if stop is None:
            return 0
        text = stop[:m] + c
        return next(k for k in range(min(len(stop), m + 1), -1, -1) if text.endswith(stop[:k]))

    def _spellable(self, seg: Segment) -> Segment:
        if not isinstance(seg, Lit):
            return seg
        keep = tuple(o for o in seg.options if o and self._spell(o) < INF)
        if not keep:
            raise ValueError(f"the tokenizer cannot spell any of {list(seg.options)[:5]}")
        return Lit(keep)

    def _spell(self, text: str) -> int:
        """Fewest tokens whose surfaces concatenate to ``text`` (INF when impossible)."""
        best = [0] + [INF] * len(text)
        for end in range(1, len(text) + 1):
            for beg in range(max(0, end - 32), end):
                if best[beg] + 1 < best[end] and text[beg:end] in self.vocab.by_surface:
                    best[end] = best[beg] + 1
        return best[-1]

    # --- the NFA ------------------------------------------------------------------------
    def start(self, i: int) -> State:
        seg = self.t[i]
        if isinstance(seg, Lit):
            return ("L", i, "")
        if isinstance(seg, Free):
            return ("F", i, 0, False, 0)
        if isinstance(seg, Number):
            return ("N", i, "s", False, 0)
        return ("E", i)

    def complete(self, s: State) -> bool:
        if s[0] == "L":
            return s[2] in self.t[s[1]].options
        if s[0] == "F":
            return s[2] > 0 and not s[3]
        return s[0] == "N" and s[3] and s[2] in (JSON_FINAL if self.t[s[1]].json else SEED_FINAL)

    def closure(self, states: Any) -> frozenset:
        out: set[State] = set()
        stack = list(states)
        while stack:
            s = stack.pop()
            if s not in out:
                out.add(s)
                if s[0] in "LFN" and self.complete(s):
                    stack.append(self.start(s[1] + 1))
        return frozenset(out)

    def step(self, s: State, c: str) -> State | None:
        kind, i = s[0], s[1] if len(s) > 1 else -1
        if kind == "L":
            p = s[2] + c
            return ("L", i, p) if p in self._prefixes[i] else None
        if kind == "F":
            seg = self.t[i]
            if s[3]:  # the character after a backslash
                return ("F", i, s[2] + 1, False, 0) if c in '"\\/' else None
            if seg.json_escapes and c == "\\":
                return ("F", i, s[2] + 1, True, 0)
            if not seg.ok(c) or not (s[2] or not c.isspace()):
                return None
            m = self._progress(i, s[4], c)
            stop = self._stops[i]
            return None if stop is not None and m == len(stop) else ("F", i, s[2] + 1, False, m)
        if kind == "N":
            table = (JSON_NUM if self.t[i].json else SEED_NUM)[s[2]]
            digit = c in "0123456789"
            q = table.get(c) or (table.get("n") if digit and c != "0" else None) or (
                table.get("d") if digit else None)
            return ("N", i, q, s[3] or (digit and c != "0"), s[4] + 1) if q else None
        return None

    def consume(self, states: frozenset, text: str) -> frozenset:
        """The states after reading ``text`` from ``states``; empty when it leaves the format."""
        for c in text:
            nxt = [n for s in states if (n := self.step(s, c)) is not None]
            if not nxt:
                return frozenset()
            states = self.closure(nxt)
        return states

    def accepts(self, text: str) -> bool:
        """Whether ``text`` is a whole answer (what comes before ``<|end|>``)."""
        return any(s[0] == "E" for s in self.consume(self.initial, text))

    def advance(self, states: frozenset, token: int) -> frozenset:
        """The states after generating ``token``; ``{DONE}`` after ``<|end|>``."""
        if DONE in states or not states:
            return frozenset([DONE])
        if token == self.vocab.end_id and any(s[0] == "E" for s in states):
            return frozenset([DONE])
        surf = self.vocab.surfaces[token] if token < len(self.vocab.surfaces) else None
        return self.consume(states, surf) if surf else frozenset()

    # --- how many tokens are still needed -----------------------------------------------
    def key(self, s: State) -> State:
        """What a state's allowed tokens depend on (drops free-text lengths)."""
        if s[0] == "F":
            return ("F", s[1], s[2] == 0, s[2] < self.t[s[1]].max_chars, s[3], s[4])
        if s[0] == "N":
            return ("N", s[1], s[2], s[3], s[4] < self.t[s[1]].max_chars)
        return s

    def need(self, states: frozenset) -> int:
        """The fewest tokens (``<|end|>`` included) that can finish the answer."""
        return min((self._need1(s) for s in states), default=INF)

    def _need1(self, s: State) -> int:
        k = self.key(s)
        if k not in self._need:
            self._need[k] = INF  # guards recursion
            self._need[k] = self._compute_need(s)
        return self._need[k]

    def _compute_need(self, s: State) -> int:
        if s[0] in "DE":
            return int(s[0] == "E")
        after = self._need1(self.start(s[1] + 1)) if s[0] in "LFN" and self.complete(s) else INF
        if s[0] == "L":
            rest = [self._spell(o[len(s[2]):]) for o in self.t[s[1]].options
                    if o.startswith(s[2]) and o != s[2]]
            return min([after] + [r + self._need1(self.start(s[1] + 1)) for r in rest])
        if s[0] == "F":
            return after if s[2] else 1 + int(s[3]) + self._need1(self.start(s[1] + 1))
        # a number: breadth-first over its DFA, one single-character token a step; at its
        # start, at least the room it reserves (so the fields before it leave that room)
        frontier, seen, steps = [s], {s[2:4]}, 0
        reserve = self.t[s[1]].reserve if s[2] == "s" else 0
        while frontier and steps < 10:
            if any(self.complete(x) for x in frontier):
                return max(steps, reserve) + self._need1(self.start(s[1] + 1))
            steps += 1
            nxt = []
            for x in frontier:
                for c in "0123456789.,":
                    y = self.step(x, c) if c in self.vocab.by_surface else None
                    if y is not None and y[2:4] not in seen:
                        seen.add(y[2:4])
                        nxt.append(y)
            frontier = nxt
        return INF

    # --- allowed tokens -------------------------------------------------------------------
    def _exact(self, parts: _Parts, s: State, ids: Any, must_shrink: bool = False) -> None:
        base, surf = self.closure([s]), self.vocab.surfaces
        for t in ids:
            after = self.consume(base, surf[int(t)])
            need = self.need(after) if after else INF
            if need < INF and (not must_shrink or need < self._need1(s)):
                parts.exact[int(t)] = min(parts.exact.get(int(t), INF), need)

    def _completes(self, i: int, m: int) -> np.ndarray:
        """Ids of the tokens that would spell all of free text ``i``'s stop literal, from
        progress ``m``."""
        if (i, m) not in self._completing:
            stop = self._stops[i]
            assert stop is not None
            head = stop[:m]
            self._completing[(i, m)] = np.array(
                [t for t, x in enumerate(self.vocab.surfaces) if x and stop in head + x],
                dtype=np.int64)
        return self._completing[(i, m)]

    def parts(self, s: State) -> _Parts:
        """What state ``s`` allows (cached by :meth:`key`)."""
        k = self.key(s)
        if k not in self._parts:
            self._parts[k] = self._compute_parts(s)
        return self._parts[k]

    def _compute_parts(self, s: State) -> _Parts:
        v, parts = self.vocab, _Parts(None, INF, {})
        if s[0] in "DE":
            parts.exact = dict.fromkeys(v.stop_ids if s[0] == "D" else [v.end_id], 0)
            return parts
        i = s[1]
        nxt = self.t[i + 1] if i + 1 < len(self.t) else None
        if s[0] == "L":
            for o in self.t[i].options:
                if not o.startswith(s[2]) or o == s[2]:
                    continue
                r = o[len(s[2]):]
                self._exact(parts, s, [t for j in range(1, len(r) + 1)
                                       for t in v.by_surface.get(r[:j], [])])
                # tokens running past the literal into the next segment
                cand, n = v.startswith(r), len(r)
                if isinstance(nxt, Free):  # vectorised: the rest is free text, not space-led
                    _, tail = v.class_runs(nxt)
                    cand = cand[tail[cand] >= v.lengths[cand] - n]
                    stop = self._stops[i + 1]
                    cand = [t for t in cand if not v.surfaces[t][n].isspace()
                            and (stop is None or stop not in v.surfaces[t][n:])]
                    if cand:
                        if parts.bulk is None:
                            parts.bulk = np.zeros(len(v.surfaces), dtype=bool)
                        parts.bulk[cand] = True
                        parts.bulk_need = self._need1(("F", i + 1, 1, False, 0))
                elif nxt is not None:
                    first = {c for c in "0123456789" if self.step(self.start(i + 1), c)}
                    if isinstance(nxt, Lit):
                        first = {o[0] for o in nxt.options}
                    self._exact(parts, s, [t for t in cand if v.surfaces[t][n] in first])
        elif s[0] == "F":
            seg, (head, _) = self.t[i], v.class_runs(self.t[i])
            if s[2] >= seg.max_chars:
                return parts  # past the cap: only the next segment (in the closure) goes on
            if s[3]:  # after a backslash: the escaped character, maybe with more text
                self._exact(parts, s, [t for c in '"\\/' for t in
                                       [*v.by_surface.get(c, []), *v.startswith(c)]])
                return parts
            parts.bulk = (head == v.lengths) & (v.lengths > 0)
            if s[2] == 0:
                parts.bulk &= self._nonspace
            if self._stops[i] is not None:
                parts.bulk[self._completes(i, s[4])] = False
            parts.bulk_need = self._need1(("F", i, 1, False, 0))
            if seg.json_escapes:
                self._exact(parts, s, self._backslashed)
            if s[2] and isinstance(nxt, Lit):  # text + the start of the next literal
                for o in nxt.options:
                    for j in range(1, len(o) + 1):
                        cand = v.endswith(o[:j])
                        cand = cand[(v.lengths[cand] > j) & (head[cand] >= v.lengths[cand] - j)]
                        self._exact(parts, s, [t for t in cand if not parts.bulk[t]])
        else:  # number: past the cap, only tokens that bring the end closer
            self._exact(parts, s, self._numeric, must_shrink=s[4] >= self.t[i].max_chars)
        return parts

    def allowed(self, states: frozenset, remaining: int) -> torch.Tensor:
        """Boolean mask over the vocabulary: the tokens that keep the answer in format and
        still let it finish within ``remaining`` tokens (this one included)."""
        return torch.from_numpy(self._mask_rows[self.mask_id(states, remaining)])

    def mask_id(self, states: frozenset, remaining: int) -> int:
        """The number of :meth:`allowed`'s mask for ``states`` with ``remaining`` tokens left:
        its row in :meth:`mask_table`."""
        states = states or frozenset([DONE])  # a row that left the format may only stop
        need = self.need(states)
        budget = remaining if need + self.margin >= remaining else None
        ck = (frozenset(self.key(s) for s in states), budget)
        if ck not in self._mask_ids:
            mask = np.zeros(len(self.vocab.surfaces), dtype=bool)
            for s in {self.key(s): s for s in states}.values():
                p = self.parts(s)
                if p.bulk is not None and (budget is None or p.bulk_need <= budget - 1):
                    mask |= p.bulk
                mask[[t for t, n in p.exact.items() if budget is None or n <= budget - 1]] = True
            if not mask.any():
                mask[list(self.vocab.stop_ids)] = True
            self._mask_ids[ck] = len(self._mask_rows)
            self._mask_rows.append(mask)
        return self._mask_ids[ck]

    def mask_table(self, device: torch.device, width: int) -> torch.Tensor:
        """Every mask so far as the rows of one ``[masks, width]`` tensor on ``device``, True
        where a token is *blocked* (the logits' width may differ from the tokenizer's: extra
        columns are blocked). Kept there and grown only by the masks new since the last call,
        so a step sends the device a row number per answer, not a mask."""
        key = (str(device), width)
        table = self._tables.get(key)
        have = 0 if table is None else table.shape[0]
        if have < len(self._mask_rows):
            vocab = len(self.vocab.surfaces)
            new = np.ones((len(self._mask_rows) - have, width), dtype=bool)
            new[:, :min(vocab, width)] = ~np.stack(self._mask_rows[have:])[:, :width]
            rows = torch.from_numpy(new).to(device)
            table = rows if table is None else torch.cat([table, rows])
            self._tables[key] = table
        return table

    def logits_processor(self, max_new_tokens: int) -> AnswerLogitsProcessor:
        """A fresh processor for one ``generate`` call."""
        need = self.need(self.initial)
        if need > max_new_tokens:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too few for an answer in "
                             f"this format: at least {need} are needed")
        return AnswerLogitsProcessor(self, max_new_tokens)


class AnswerLogitsProcessor(LogitsProcessor):
    """Masks, row by row, the tokens that would take an answer out of its format.

    Keeps one NFA state set per row, advanced by the tokens ``generate`` appended since the
    previous call; the first call's sequence length marks where the answers begin. The
    masks are rows of the grammar's table on the scores' device (:meth:`AnswerGrammar.
    mask_table`), picked by one indexed op.
    """

    def __init__(self, grammar: AnswerGrammar, max_new_tokens: int) -> None:
        self.grammar = grammar
        self.max_new_tokens = max_new_tokens
        self.states: list[frozenset] | None = None
        self._start = self._seen = 0
        self.seconds = 0.0  # time spent here, for benchmarks

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self._mask(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        return out

    def _mask(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        g, length = self.grammar, input_ids.shape[1]
        if self.states is None or len(self.states) != input_ids.shape[0]:
            self.states = [g.initial] * input_ids.shape[0]
            self._start = self._seen = length
        if length > self._seen:
            for b, new in enumerate(input_ids[:, self._seen:].tolist()):
                for tok in new:
                    self.states[b] = g.advance(self.states[b], tok)
            self._seen = length
        remaining = self.max_new_tokens - (length - self._start)
        rows = torch.tensor([g.mask_id(s, remaining) for s in self.states])
        if scores.device.type == "cuda":
            rows = rows.pin_memory().to(scores.device, non_blocking=True)
        blocked = g.mask_table(scores.device, scores.shape[-1])
        # one gather of the rows' masks, one fill: no mask crosses to the device per step
        return scores.masked_fill(blocked[rows], float("-inf"))
