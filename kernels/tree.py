"""Token trees for verifying many drafts in one forward: masks, positions, flattening, paths.

A batch of draft trees is flattened to `tokens [B, T]` and `parents [B, T]`: node 0 of each row is
the root (the last emitted token, not yet fed), `parents[b, i] < i` is node i's parent, and -1
marks a root. Rows with fewer nodes are padded with standalone roots (parent -1), which see only
themselves and are dropped after verification. SpecInfer (Miao et al. 2024) and Medusa (Cai et al.
2024) verify such trees with an attention mask in which each node sees exactly its ancestors and
itself, and a position equal to its depth past the cache, so every node is scored as if its path
were the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_parents(parents: Tensor) -> None:
    """ValueError unless parents is an integer [B, T] with -1 <= parents[b, i] < i."""
    if parents.dim() != 2 or parents.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"parents must be an integer tensor [B, T], got {parents.dtype} {tuple(parents.shape)}")
    index = torch.arange(parents.shape[1], device=parents.device)  # [T]
    bad = (parents < -1) | (parents >= index)  # [B, T]
    if bool(bad.any()):
        row, node = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"node {node} of row {row} has parent {int(parents[row, node])}; a parent must be "
                         f"-1 (a root) or an earlier node in [0, {node})")


def tree_mask(parents: Tensor) -> Tensor:
    """Ancestor-or-self mask: mask[b, i, j] is True when node j is node i or one of its ancestors.

    parents: [B, T] (see the module docstring). Returns bool [B, T, T]; a chain (parents[i] = i - 1)
    gives the causal lower-triangular mask.
    """
    check_parents(parents)
    batch, size = parents.shape
    # trees are small (tens of nodes): walk the parent lists on the host, then set every entry at once
    rows, nodes, ancestors = [], [], []
    for row, parent_list in enumerate(parents.tolist()):
        lineage: list[list[int]] = []
        for node, parent in enumerate(parent_list):
            lineage.append((lineage[parent] if parent >= 0 else []) + [node])  # parents come first
            rows += [row] * len(lineage[node])
            nodes += [node] * len(lineage[node])
            ancestors += lineage[node]
    mask = torch.zeros((batch, size, size), dtype=torch.bool)  # [B, T, T]
    mask[rows, nodes, ancestors] = True
    return mask.to(parents.device)


def tree_depths(mask: Tensor) -> Tensor:
    """Depth of every node from its ancestor mask [B, T, T]: [B, T] (a root has depth 0)."""
    return mask.long().sum(-1) - 1


def tree_positions(mask: Tensor, root_positions: Tensor) -> Tensor:
    """Position ids of every node: its root's position plus its depth.

    mask: [B, T, T] from `tree_mask`; root_positions: [B] or [B, 1], the position the root takes
    (the count of real tokens already in the cache). Returns [B, T].
    """
    return root_positions.reshape(-1, 1) + tree_depths(mask)


def tree_attention_bias(past: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention mask [B, 1, T, L+T] for T tree nodes fed after L cached positions.

    past: [B, L] (1 = a real cached position, 0 = padding or a hidden position); mask: [B, T, T]
    ancestor mask among the new nodes. Allowed entries are 0, others the dtype's minimum.
    """
    batch, size = mask.shape[:2]
    allowed = torch.cat([past.bool()[:, None, :].expand(batch, size, past.shape[1]), mask.bool()], dim=2)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)  # [B, T, L+T]
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # [B, 1, T, L+T]


def pack_trees(tokens: Sequence[Sequence[int]], parents: Sequence[Sequence[int]],
               pad_token: int = 0) -> tuple[Tensor, Tensor]:
    """Flatten per-row trees (lists; node counts may differ) into padded tensors.

    Returns (tokens [B, T], parents [B, T]) with T the largest tree; padding nodes are standalone
    roots (parent -1) holding `pad_token`.
    """
    if len(tokens) != len(parents) or any(len(t) != len(p) for t, p in zip(tokens, parents)):
        raise ValueError("every row needs one parent per token")
    size = max(len(t) for t in tokens)
    ids = torch.full((len(tokens), size), pad_token, dtype=torch.long)  # [B, T]
    par = torch.full((len(tokens), size), -1, dtype=torch.long)  # [B, T]
    for row, (tok, parent) in enumerate(zip(tokens, parents)):
        ids[row, :len(tok)] = torch.as_tensor(list(tok), dtype=torch.long)
        par[row, :len(parent)] = torch.as_tensor(list(parent), dtype=torch.long)
    check_parents(par)
    return ids, par


def trie_from_paths(root: int, paths: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Merge candidate continuations of `root` into one tree (shared prefixes become shared nodes).

    Returns (tokens, parents) in insertion order (a parent always precedes its children); e.g.
    root 5 with paths [[1, 2], [1, 3]] gives tokens [5, 1, 2, 3] and parents [-1, 0, 1, 1].
    """
    tokens, parents = [root], [-1]
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for path in paths:
        node = 0
        for token in path:
            key = (node, int(token))
            if key not in children:
                children[key] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
            node = children[key]
    return tokens, parents


def path_to(parents: Sequence[int], node: int) -> list[int]:
    """Node indices from the root down to `node` (both included), from one row's parent list."""
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def path_index(paths: Sequence[Sequence[int]]) -> Tensor:
    """Accepted paths (node indices per row, lengths may differ) as a gather index [B, N].

    Short rows repeat their last node, so every entry is a valid node; callers drop the surplus.
    """
    width = max(len(p) for p in paths)
    index = torch.zeros((len(paths), width), dtype=torch.long)  # [B, N]
    for row, path in enumerate(paths):
        index[row, :len(path)] = torch.as_tensor(list(path), dtype=torch.long)
        index[row, len(path):] = path[-1]
    return index
