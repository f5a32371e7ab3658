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

>>> scores = score_continuations(model, out.cache, keep, [[ids_a, ids_b], [ids_c]],
...                              [lead_0, lead_1])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def score_continuations(
    model: Any,
    cache: Any,
    keep: torch.Tensor,
    candidates: Sequence[Sequence[Sequence[int]]],
    lead: Sequence[Sequence[int]],
    *,
    chunk_tokens: int = 4096,
) -> list[torch.Tensor]:
    """Log-probability of each candidate continuation of each row, given that row's prefix.

    ``cache``: the generation's KV cache (rows x cached positions), left as it was found.
    ``keep``: bool (rows x cached positions): the cached positions that form each row's
    prefix. ``lead``: per row, tokens fed before every candidate and not scored: at least the
    last kept prefix token (masked out of the cache), then any prefix tokens not in the cache.
    ``candidates``: per row, the token lists to score. Returns per row a float tensor of
    ``log p(candidate | prefix)``, one entry a candidate, in the given order.
    """
    rows = len(candidates)
    device = keep.device
    cached = keep.shape[1]
    # the position of each row's next token: left padding counts from the first real token
    start = keep.long().sum(-1)
    trees = [_Tree(lead[b], candidates[b]) for b in range(rows)]
    width = max(len(t.tokens) for t in trees)
    ids = torch.zeros(rows, width, dtype=torch.long)
    depth = torch.zeros(rows, width, dtype=torch.long)
    allowed_own = torch.zeros(rows, width, width, dtype=torch.bool)
    real = torch.zeros(rows, width, dtype=torch.bool)
    for b, tree in enumerate(trees):
        n = len(tree.tokens)
        ids[b, :n] = torch.tensor(tree.tokens)
        depth[b, :n] = torch.tensor(tree.depth)
        allowed_own[b, :n, :n] = torch.from_numpy(tree.ancestors())
        real[b, :n] = True
    # a padding query would see nothing: let it see itself so softmax stays finite
    allowed_own |= torch.eye(width, dtype=torch.bool) & ~real[:, :, None]
    ids, real, allowed_own = ids.to(device), real.to(device), allowed_own.to(device)
    pos = depth.to(device) + (start - 1)[:, None]  # the root sits at start - 1
    # the cache must not also hold the root: drop each row's last kept position
    last_kept = torch.where(keep, torch.arange(cached, device=device), -1).amax(-1)
    prefix = keep.clone()
    prefix[torch.arange(rows, device=device), last_kept.clamp(min=0)] = False
    allowed = torch.cat([prefix[:, None, :] & real[:, :, None], allowed_own], dim=-1)
    # an additive float mask: SDPA's fast CPU kernel takes it, a boolean one is ~3x slower
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    length = cache.get_seq_length()
    # every scored node: (row, node, parent); its log p comes from the parent's hidden state
    where = [(b, i, p) for b, t in enumerate(trees) for i, p in t.scored()]
    logp = torch.empty(len(where))
    with torch.inference_mode():
        hidden = model.model(input_ids=ids, attention_mask=mask[:, None], position_ids=pos,
                             cache=cache, use_cache=True).last_hidden_state
        _crop(cache, length)
        index = torch.tensor(where, dtype=torch.long, device=device).reshape(-1, 3)
        for i in range(0, len(where), chunk_tokens):
            bb, node, parent = index[i:i + chunk_tokens].unbind(-1)
            logits = model.lm_head(hidden[bb, parent]).float()
            logp[i:i + chunk_tokens] = (logits.log_softmax(-1)
                                        .gather(-1, ids[bb, node][:, None])[:, 0]).cpu()
    out, at = [], 0
    for tree in trees:
        k = len(tree.scored())
        node_logp = torch.zeros(len(tree.tokens))
        node_logp[[i for i, _ in tree.scored()]] = logp[at:at + k]
        at += k
        out.append(torch.stack([node_logp[path].sum() for path in tree.paths]))
    return out


class _Tree:
    """One row's lead (a chain) and its candidates merged into a token tree, nodes in
    creation order (a parent always before its children)."""

    def __init__(self, lead: Sequence[int], candidates: Sequence[Sequence[int]]) -> None:
        if not lead:
            raise ValueError("lead must hold at least the last prefix token")
        self.tokens: list[int] = list(lead)
        self.parent: list[int] = [-1] + list(range(len(lead) - 1))
        self.depth: list[int] = list(range(len(lead)))
        self.n_lead = len(lead)
        children: dict[tuple[int, int], int] = {}
        self.paths: list[list[int]] = []
        for cand in candidates:
            node, path = self.n_lead - 1, []
            for token in cand:
                key = (node, int(token))
                if key not in children:
                    children[key] = len(self.tokens)
                    self.tokens.append(int(token))
                    self.parent.append(node)
                    self.depth.append(self.depth[node] + 1)
                node = children[key]
                path.append(node)
            self.paths.append(path)

    def scored(self) -> list[tuple[int, int]]:
        """(node, parent) of every candidate node."""
        return [(i, self.parent[i]) for i in range(self.n_lead, len(self.tokens))]

    def ancestors(self) -> np.ndarray:
        """Boolean (nodes x nodes): node i may attend to node j (an ancestor, or itself)."""
        n = len(self.tokens)
        anc = np.eye(n, dtype=bool)
        for i in range(1, n):
            anc[i] |= anc[self.parent[i]]
        return anc


def _crop(cache: Any, length: int) -> None:
    """Leave the cache as generation left it (the candidates' entries removed)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
