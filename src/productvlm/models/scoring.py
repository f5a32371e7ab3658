"""Score many continuations of each row at once, on top of the KV cache generation left behind.

After a batch is generated, the price interval needs the model's probability of every
candidate price after the answer's "... Full Price: " prefix. Scoring them one sequence each
would repeat the prompt, the image and the prefix K times. Instead each row's candidates are
merged into a token tree (candidates that start alike share their first tokens), the tree's
nodes are packed into one sequence behind the cached prefix, and a 4-D attention mask lets
every node see the row's prefix and its own ancestors only (tree attention), with position
ids given by depth. One forward pass of (distinct tree nodes) new tokens per row and no copy
of the cache: what this costs does not grow with the prompt's length (thousands of image
positions for the real model).

The last kept prefix token is fed again as the tree's root (its cache entry is masked), so
the logits that predict the candidates' first tokens are part of this pass.

>>> groups = [[(lead_0, [ids_a, ids_b])], [(lead_1, [ids_c])]]
>>> scores = score_continuations(model, out.cache, keep, groups)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from productvlm.models.compat import cache_arg
from productvlm.models.families import family_of, text_model, unwrap

Group = tuple[Sequence[int], Sequence[Sequence[int]]]  # (lead, candidates)


def score_continuations(
    model: Any,
    cache: Any,
    keep: torch.Tensor,
    groups: Sequence[Sequence[Group]],
    *,
    prune: float | None = None,
    probe: int = 2,
    chunk_tokens: int = 4096,
) -> list[list[torch.Tensor]]:
    """Log-probability of each candidate continuation of each row, given that row's prefix.

    ``cache``: the generation's KV cache (rows x cached positions), left as it was found.
    ``keep``: bool (rows x cached positions): the cached positions that form each row's
    prefix. ``groups``: per row, one or more ``(lead, candidates)``: the lead is fed before
    each of its candidates and not scored; it starts with the last kept prefix token (the
    same for every group of a row: it is masked out of the cache and fed again as the tree's
    root), then any tokens its candidates share that are not in the cache (an answer prefix
    other than the generated one, say). Returns per row, per group, a float tensor of
    ``log p(candidate | prefix + lead)``, one entry a candidate, in the given order.

    ``prune``: score in two passes. The first scores each candidate's first ``probe`` tokens;
    candidates whose beginning is already ``prune`` nats (log-probability) below the group's
    best beginning are not followed further: together they get their beginning's
    probability, shared evenly, an upper bound of their mass (a tail is never made lighter
    than it is). That mass is at most e^-prune of the best beginning's, so what is lost is
    the shape of a negligible tail; what is saved is the unlikely branches of the tree.
    """
    rows = len(groups)
    trees = [_Tree(groups[b]) for b in range(rows)]
    length = cache.get_seq_length()
    state = _Passes(model, cache, keep, chunk_tokens)
    try:
        if prune is None:
            state.run([list(range(len(t.tokens))) for t in trees], trees)
        else:
            state.run([t.first_pass(probe) for t in trees], trees)
            second = []
            for b, tree in enumerate(trees):
                second.append(tree.second_pass(state.logp[b], probe, prune))
            if any(second):
                state.run(second, trees)
    finally:
        _crop(cache, length)
    return [[tree.scores(state.logp[b], g, probe if prune is not None else None)
             for g in range(len(tree.paths))] for b, tree in enumerate(trees)]


class _Passes:
    """Forward passes over tree nodes behind the cached prefix; each pass's nodes stay in the
    cache (and their hidden states here) so that a later pass can extend their branches."""

    def __init__(self, model: Any, cache: Any, keep: torch.Tensor, chunk_tokens: int) -> None:
        self.model, self.cache, self.chunk_tokens = model, cache, chunk_tokens
        self.device = keep.device
        self.rows, self.cached = keep.shape
        # the cache must not also hold the root: drop each row's last kept position
        last = torch.where(keep, torch.arange(self.cached, device=self.device), -1).amax(-1)
        # the root's position: left padding counts from the first real token; a family's
        # rope offsets are added (Qwen's multimodal rope: the image's tokens take fewer
        # positions than places)
        self.root_pos = keep.long().sum(-1).cpu() - 1
        deltas = family_of(unwrap(model)).rope_offsets(model)
        if deltas is not None:
            self.root_pos += deltas.reshape(-1).cpu().long()
        self.prefix = keep.clone()
        self.prefix[torch.arange(self.rows, device=self.device), last.clamp(min=0)] = False
        self.col: list[dict[int, int]] = [{} for _ in range(self.rows)]  # node -> cache column
        self.hidden: list[torch.Tensor] = []  # per pass: rows x width x hidden
        self.where: list[dict[int, tuple[int, int]]] = [{} for _ in range(self.rows)]
        self.logp: list[dict[int, float]] = [{} for _ in range(self.rows)]
        self.dtype = next(model.parameters()).dtype
        self.decoder = text_model(model)

    def run(self, todo: list[list[int]], trees: list[_Tree]) -> None:
        """One forward pass over ``todo[b]`` (nodes of row b, parents first)."""
        rows, dev = self.rows, self.device
        width = max(1, max(len(t) for t in todo))
        now = self.cache.get_seq_length()
        ids = np.zeros((rows, width), dtype=np.int64)
        pos = np.zeros((rows, width), dtype=np.int64)
        allowed = np.zeros((rows, width, now + width), dtype=bool)
        allowed[:, :, :self.cached] = self.prefix[:, None, :].cpu().numpy()
        for b, nodes in enumerate(todo):
            tree, k = trees[b], len(nodes)
            ids[b, :k] = np.asarray(tree.tokens)[nodes]
            pos[b, :k] = int(self.root_pos[b]) + np.asarray(tree.depth)[nodes]
            anc = tree.ancestors()
            # itself and its ancestors: in this pass, or cached by an earlier one
            allowed[b, :k, now:now + k] = anc[np.ix_(nodes, nodes)]
            earlier = list(self.col[b])
            if earlier:
                cols = [self.col[b][n] for n in earlier]
                allowed[b][:k, cols] = anc[np.ix_(nodes, earlier)]
            allowed[b, k:, :self.cached] = False
            allowed[b, np.arange(k, width), now + np.arange(k, width)] = True  # padding
        ids, pos, allowed = torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(allowed)
        mask = torch.zeros(allowed.shape, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        with torch.inference_mode():
            hidden = self.decoder(
                input_ids=ids.to(dev), attention_mask=mask[:, None].to(dev),
                position_ids=pos.to(dev), use_cache=True,
                **{cache_arg(self.decoder): self.cache}).last_hidden_state
        p = len(self.hidden)
        self.hidden.append(hidden)
        for b, nodes in enumerate(todo):
            for j, n in enumerate(nodes):
                self.col[b][n] = now + j
                self.where[b][n] = (p, j)
        self._score(todo, trees)

    def _score(self, todo: list[list[int]], trees: list[_Tree]) -> None:
        """log p of each new node but a root, from its parent's hidden state."""
        jobs = [(b, n, *self.where[b][trees[b].parent[n]]) for b, nodes in enumerate(todo)
                for n in nodes if trees[b].parent[n] >= 0]
        for i in range(0, len(jobs), self.chunk_tokens):
            part = jobs[i:i + self.chunk_tokens]
            with torch.inference_mode():
                states = torch.stack([self.hidden[p][b, j] for b, _, p, j in part])
                logits = self.model.lm_head(states).float()
                target = torch.tensor([trees[b].tokens[n] for b, n, _, _ in part],
                                      device=logits.device)
                values = logits.log_softmax(-1).gather(-1, target[:, None])[:, 0].tolist()
            for (b, n, _, _), v in zip(part, values, strict=True):
                self.logp[b][n] = v


class _Tree:
    """One row's groups merged into a token tree under the root (the lead's first token),
    nodes in creation order (a parent always before its children). ``paths[g][k]``: the
    nodes of group g's candidate k, after its lead."""

    def __init__(self, groups: Sequence[Group]) -> None:
        if not groups or not all(lead for lead, _ in groups):
            raise ValueError("every group needs a lead holding at least the last prefix token")
        root = int(groups[0][0][0])
        if any(int(lead[0]) != root for lead, _ in groups):
            raise ValueError("the groups of a row must share the first lead token (the root)")
        self.tokens, self.parent, self.depth = [root], [-1], [0]
        self._children: dict[tuple[int, int], int] = {}
        self._anc: np.ndarray | None = None
        self.paths: list[list[list[int]]] = []
        self._lead_nodes: set[int] = {0}
        for lead, candidates in groups:
            path, top = self._walk(0, lead[1:])
            self._lead_nodes.update(path)
            self.paths.append([self._walk(top, cand)[0] for cand in candidates])

    def _walk(self, node: int, tokens: Sequence[int]) -> tuple[list[int], int]:
        path = []
        for token in tokens:
            key = (node, int(token))
            if key not in self._children:
                self._children[key] = len(self.tokens)
                self.tokens.append(int(token))
                self.parent.append(node)
                self.depth.append(self.depth[node] + 1)
            node = self._children[key]
            path.append(node)
        return path, node

    def ancestors(self) -> np.ndarray:
        """Boolean (nodes x nodes): node i may attend to node j (an ancestor, or itself)."""
        if self._anc is None or len(self._anc) != len(self.tokens):
            n = len(self.tokens)
            anc = np.eye(n, dtype=bool)
            for i in range(1, n):
                anc[i] |= anc[self.parent[i]]
            self._anc = anc
        return self._anc

    def first_pass(self, probe: int) -> list[int]:
        """The root, the leads and each candidate's first ``probe`` nodes (creation order).

        A lead node stays in even where it is also deep in another group's candidate (an
        answer whose title ran on into "... Full Price: 1,8": the listing's candidates
        "1,800." walk the same nodes), so every node's parent is scored before it."""
        skip = {n for paths in self.paths for path in paths for n in path[probe:]}
        skip -= self._lead_nodes
        return [n for n in range(len(self.tokens)) if n not in skip]

    def second_pass(self, logp: dict[int, float], probe: int, prune: float) -> list[int]:
        """The nodes still to score: those of candidates whose beginning is within ``prune``
        of the best beginning in their group."""
        need: set[int] = set()
        for paths in self.paths:
            begun = [sum(logp[n] for n in path[:probe]) for path in paths]
            best = max(begun, default=0.0)
            for path, lp in zip(paths, begun, strict=True):
                if lp >= best - prune:
                    need.update(n for n in path[probe:] if n not in logp)
        return sorted(need)

    def scores(self, logp: dict[int, float], g: int, probe: int | None) -> torch.Tensor:
        """Per candidate of group g: its log-probability; a pruned one shares its
        beginning's probability (an upper bound) evenly with the other pruned candidates that
        begin alike."""
        paths = self.paths[g]
        if not paths:
            return torch.zeros(0)
        out, pruned = [], {}
        for k, path in enumerate(paths):
            if not path or path[-1] in logp:  # scored to the end (a parent is always scored first)
                out.append(sum(logp[n] for n in path))
            else:
                out.append(0.0)
                pruned.setdefault(tuple(path[:probe]), []).append(k)
        for head, ks in pruned.items():
            share = sum(logp[n] for n in head) - float(np.log(len(ks)))
            for k in ks:
                out[k] = share
        return torch.tensor(out, dtype=torch.float32)


def _crop(cache: Any, length: int) -> None:
    """Leave the cache as generation left it (the candidates' entries removed)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
