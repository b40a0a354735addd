"""Token Recycling: draft a tree from an adjacency matrix of the target's own recent top-k candidates.

Luo et al. 2024, *Turning Trash into Treasure: Accelerating Inference of Large Language Models with
Token Recycling*. Every verify pass computes the target's distribution at every draft node; the
candidate tokens it ranks highest there are usually thrown away. Token Recycling keeps them.

Rule: an adjacency matrix M [V, k] holds, per token x, the top-k tokens the target predicted the
last time it read x. Each step, a draft tree grows breadth-first from the last token along a static
template (a fixed set of rank paths, e.g. (0,), (1,), (0, 0)): the node reached by rank path
(r_1..r_d) holds M[parent token][r_d]. One forward verifies the tree (`tree_verify`); then every
verified node x sets M[x] ← top-k(logits at x), the accepted path written last so its (true)
context wins. The drafts are deterministic, so the tree walk (recursive rejection sampling with
one-hot proposals; greedy: exact match) is lossless. Rows of M no logit has reached yet start from
the tokens that followed x in the prompt (latest first) — our train-free warm start; the paper
starts from zeros and carries M across queries.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import LoopStart, check_count, check_draft_len, refuse_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.tree_verify import DraftTree, tree_draft_and_verify

RANK_KEEP = 0.3  # template score of rank r is RANK_KEEP ** r: a prior that the target's rank-r token comes next
DEPTH_KEEP = 0.8  # and each level deeper multiplies by this (a path must survive every level)


def tree_template(size: int, topk: int, max_depth: int) -> list[tuple[int, ...]]:
    """The `size` rank paths of highest prior score DEPTH_KEEP^d · Π RANK_KEEP^r_i (depth ≤ max_depth,
    ranks < topk), in breadth-first order. Every prefix of a path scores higher than it, so the set is
    a tree (each path's parent is in it)."""
    heap: list[tuple[float, tuple[int, ...]]] = [(-DEPTH_KEEP, (0,))]
    chosen: list[tuple[int, ...]] = []
    while heap and len(chosen) < size:
        neg, path = heapq.heappop(heap)
        chosen.append(path)
        if path[-1] + 1 < topk:  # next sibling: one rank lower
            heapq.heappush(heap, (neg * RANK_KEEP, path[:-1] + (path[-1] + 1,)))
        if len(path) < max_depth:  # first child
            heapq.heappush(heap, (neg * DEPTH_KEEP, path + (0,)))
    return sorted(chosen, key=lambda p: (len(p), p))


class AdjacencyMatrix:
    """M [V, k]: per token, its most recently observed top-k successors (-1 = none yet); k is at
    most the vocabulary size."""

    def __init__(self, vocab: int, topk: int):
        topk = min(topk, vocab)
        self.table = torch.full((vocab, topk), -1, dtype=torch.long)  # [V, k]
        self.seen = torch.zeros(vocab, dtype=torch.bool)  # [V]: rows already set from target logits

    def copy(self) -> AdjacencyMatrix:
        out = AdjacencyMatrix(*self.table.shape)
        out.table, out.seen = self.table.clone(), self.seen.clone()
        return out

    def merge(self, other: AdjacencyMatrix) -> None:
        """Take every row `other` has set from target logits (what another decoding learned)."""
        self.table[other.seen] = other.table[other.seen]
        self.seen |= other.seen

    def warm_start(self, tokens: Sequence[int]) -> None:
        """Fill rows no logit has set from the stream's successors: M[x] = what followed x, latest first."""
        vocab, topk = self.table.shape
        for i in range(len(tokens) - 2, -1, -1):
            x, nxt = int(tokens[i]), int(tokens[i + 1])
            if not 0 <= x < vocab or not 0 <= nxt < vocab or self.seen[x]:
                continue
            row = self.table[x]
            if bool((row == nxt).any()):
                continue
            free = (row < 0).nonzero()
            if len(free):
                row[int(free[0])] = nxt

    def update(self, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """M[tokens[i]] ← top-k(logits[i]) for i in order (a later write to the same token wins).

        tokens: [N]; logits: [N, V'] (V' ≥ vocab columns are cut to the matrix's vocabulary)."""
        vocab, topk = self.table.shape
        top = logits[:, :vocab].topk(topk, dim=-1).indices.cpu()  # [N, k]
        keep = tokens < vocab
        tokens, top = tokens[keep], top[keep]
        # last occurrence of each token wins: write in reverse after dropping earlier duplicates
        order = torch.arange(len(tokens))
        last = torch.full((vocab,), -1, dtype=torch.long).scatter_reduce(0, tokens, order, "amax")  # [V]
        final = last[tokens] == order
        self.table[tokens[final]] = top[final]
        self.seen[tokens[final]] = True

    def tree(self, root: int, template: Sequence[tuple[int, ...]], max_depth: int) -> DraftTree:
        """Breadth-first draft tree from `root` along the template's rank paths (depth ≤ max_depth);
        a path whose parent is missing, or whose matrix entry is empty, is skipped."""
        tree = DraftTree([int(root)], [-1])
        node_of: dict[tuple[int, ...], int] = {(): 0}
        table = self.table.tolist()
        for path in template:
            if len(path) > max_depth:
                break
            parent = node_of.get(path[:-1])
            if parent is None:
                continue
            token = int(table[tree.tokens[parent]][path[-1]])
            if token < 0 or token in tree.children(parent):
                continue
            node_of[path] = tree.add(parent, token)
        return tree


class RecyclingProposer:
    """One adjacency matrix per row (so a row's drafts never depend on its batch), refreshed from
    every verified node's logits."""

    def __init__(self, prompt_ids: Sequence[Sequence[int]], vocab: int, *, topk: int, tree_size: int,
                 max_depth: int, start: AdjacencyMatrix | None = None):
        if start is None:
            start = AdjacencyMatrix(vocab, topk)
        elif tuple(start.table.shape) != (vocab, min(topk, vocab)):
            raise ConfigError(f"adjacency matrix is {tuple(start.table.shape)} but this model and topk need "
                              f"{(vocab, min(topk, vocab))} (vocabulary, topk); learn it with the same model and topk")
        self.matrices = [start.copy() for _ in prompt_ids]
        for matrix, prompt in zip(self.matrices, prompt_ids):
            matrix.warm_start(prompt)
        self.template = tree_template(tree_size, topk, max_depth)
        self.trees: list[DraftTree] = []

    def propose(self, last: list[int], limits: list[int]) -> list[DraftTree]:
        self.trees = [m.tree(token, self.template, limit) for m, token, limit in zip(self.matrices, last, limits)]
        return self.trees

    def verified(self, logits: torch.Tensor) -> None:
        """logits [B, T, V] of the trees just proposed (read in `accepted`)."""
        self.logits = logits.detach()

    def accepted(self, paths: list[list[int]], final: list[int]) -> None:
        """Every verified node refreshes its token's row, the accepted path last (its context is true)."""
        for row, (matrix, tree, tokens) in enumerate(zip(self.matrices, self.trees, paths)):
            path = [0]
            for token in tokens:
                path.append(tree.children(path[-1])[token])
            on_path = set(path)
            order = [n for n in range(len(tree)) if n not in on_path] + path
            index = torch.tensor(order, dtype=torch.long)  # [T_r]
            matrix.update(torch.tensor(tree.tokens, dtype=torch.long)[index],
                          self.logits[row, index.to(self.logits.device)])


def token_recycling(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    topk: int = 4,
    tree_size: int = 8,
    draft_len: int = 8,
    adjacency: AdjacencyMatrix | None = None,
    stats: dict | None = None,
) -> Decoded:
    """Lossless decoding from `model` with Token Recycling's adjacency-matrix draft trees (no draft model).

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: must be None (the drafter is the target's own recycled candidates).
        topk: candidates kept per token in the matrix (k), a positive integer.
        tree_size: draft nodes per tree (the static template's size), a positive integer. The paper
            uses ~80 on a GPU; on a CPU every fed token costs (a 25-token forward ≈ 3 one-token
            forwards here), so the default is small.
        draft_len: deepest draft path, a positive integer.
        adjacency: the matrix every row starts from (copied, never changed) — what `learn_adjacency`
            learned on earlier queries, as the paper carries M across queries; None starts empty.
        stats: optional dict that receives "steps", "row_steps", "accepted" and "tree_nodes".
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model` (greedy: identical tokens).
    """
    return _recycle(model, prompt_ids, sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
                    stop=stop, stream=stream, draft=draft, topk=topk, tree_size=tree_size, draft_len=draft_len,
                    adjacency=adjacency, stats=stats)[0]


def learn_adjacency(model: SequenceModel, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                    topk: int = 4, tree_size: int = 8, draft_len: int = 8,
                    adjacency: AdjacencyMatrix | None = None) -> AdjacencyMatrix:
    """Decode `prompt_ids` greedily with Token Recycling and return the matrix they leave (every
    row's learned rows merged in order, over `adjacency` when given): the warm start for later
    queries, as the paper keeps M from one query to the next."""
    _, proposers = _recycle(model, prompt_ids, sampling=SamplingParams(temperature=0.0),
                            max_new_tokens=max_new_tokens, topk=topk, tree_size=tree_size, draft_len=draft_len,
                            adjacency=adjacency)
    learned = adjacency.copy() if adjacency is not None else None
    for matrix in [m for proposer in proposers for m in proposer.matrices]:
        if learned is None:
            learned = AdjacencyMatrix(*matrix.table.shape)
        learned.merge(matrix)
    if learned is None:  # nothing was decoded (no verify step ran)
        raise ConfigError("learn_adjacency decoded nothing; give it prompts and max_new_tokens >= 2")
    return learned


def _recycle(model, prompt_ids, *, sampling, max_new_tokens, generators=None, stop=None, stream=None, draft=None,
             topk, tree_size, draft_len, adjacency, stats=None) -> tuple[Decoded, list[RecyclingProposer]]:
    """Token Recycling's decode, and the proposers it built (one, or one per row when rows run alone)."""
    topk = check_count("topk", topk, "candidates kept per token")
    tree_size = check_count("tree_size", tree_size, "draft nodes per step")
    draft_len = check_draft_len(draft_len)
    refuse_draft("token-recycling", draft, "from the target's own recycled candidates")
    proposers: list[RecyclingProposer] = []

    def make_proposer(start: LoopStart) -> RecyclingProposer:
        proposers.append(RecyclingProposer(start.prompt_ids, start.vocab, topk=topk, tree_size=tree_size,
                                           max_depth=draft_len, start=adjacency))
        return proposers[-1]

    decoded = tree_draft_and_verify(model, prompt_ids, make_proposer, sampling=sampling, max_new_tokens=max_new_tokens,
                                    generators=generators, stop=stop, stream=stream, stats=stats)
    return decoded, proposers


__all__ = ["AdjacencyMatrix", "RecyclingProposer", "learn_adjacency", "token_recycling", "tree_template"]
