"""DySpec: a draft tree grown greedily by draft probability under a token budget.

Xiong et al. 2024, *DySpec: Faster Speculative Decoding with Dynamic Token Tree Structure*.

Rule: a node's value is the product of the draft probabilities along its path (DySpec's estimate of
the chance the target accepts it). Each round (one draft call) adds to the tree every candidate
child whose value is at least `threshold`, best first, until `budget` draft tokens are in the tree
or `draft_len` rounds are done; every added node then draws `tree_width` candidate children without
replacement from its draft distribution (Gumbel-top-k; greedy: the top-k). One target forward
verifies the tree. At each node the walk tries ALL of the node's draws in draw order — the ones
left out of the tree too, so choosing which to expand cannot bias the test — by recursive rejection
sampling without replacement (as RSD): each emitted token is distributed exactly as the target's p,
**lossless**. Greedy: the walk follows the target's argmax (plain greedy).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from ponder.errors import ConfigError, check_int
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import check_draft_len
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.tree_draft import (
    DraftTreeModel,
    decode_with_draft_trees,
    gumbel_top_k,
    stack_q,
    top_children,
)
from ponder.search.decoding.tree_verify import DraftTree, check_tree_width, rrs_without_replacement


def grow_dynamic(drafter: DraftTreeModel, last: list[int], limits: list[int], *, rounds: int, width: int,
                 budget: int, threshold: float, generators) -> list[DraftTree]:
    """One tree per row, grown best-first by path value (see the module docstring)."""
    trees = [DraftTree([token], [-1], draws=[[]]) for token in last]
    depth = [[0] for _ in trees]
    used_q: list[dict[int, torch.Tensor]] = [{} for _ in trees]
    heaps: list[list] = [[] for _ in trees]  # (-value, tie, parent node, token)
    value = [[1.0] for _ in trees]
    fresh = [[0] if limit > 0 else [] for limit in limits]  # nodes whose draws come next
    q_fresh = [q[None] for q in drafter.root(last)]
    for round_ in range(rounds):
        for row, tree in enumerate(trees):
            gen = None if generators is None else generators[row]
            for i, node in enumerate(fresh[row]):
                q = q_fresh[row][i]
                draws = top_children(q, width) if drafter.sampling.greedy else gumbel_top_k(q, width, gen)
                tree.draws[node] = draws
                used_q[row][node] = q
                for token in draws:
                    heapq.heappush(heaps[row], (-value[row][node] * float(q[token]), len(tree) + len(heaps[row]),
                                                node, token))
            fresh[row] = []
            while heaps[row] and len(tree) - 1 < budget and -heaps[row][0][0] >= threshold:
                neg, _, parent, token = heapq.heappop(heaps[row])
                if depth[row][parent] + 1 > limits[row]:
                    continue
                fresh[row].append(tree.add(parent, token))
                tree.draws.append([])
                depth[row].append(depth[row][parent] + 1)
                value[row].append(-neg)
        if round_ + 1 == rounds or not any(fresh):
            break
        q_fresh = drafter.score(trees, fresh)
    for tree, rows in zip(trees, used_q):
        tree.q = stack_q(len(tree), rows, drafter.vocab)  # [T, V]
    return trees


def dyspec(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 8,
    tree_width: int = 3,
    budget: int = 10,
    threshold: float = 0.1,
    stats: dict | None = None,
) -> Decoded:
    """Lossless DySpec decoding from `model`: a budgeted, best-first draft tree per step.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: the draft `SequenceModel` (same tokenizer); required.
        draft_len: most expansion rounds (draft calls after the root), so also the deepest path.
        tree_width: candidate children drawn per expanded node, a positive integer.
        budget: most draft tokens in a step's tree (what the target verifies besides the root).
        threshold: smallest path value (product of draft probabilities) a node needs, in [0, 1).
        stats: optional dict receiving steps / row_steps / accepted / tree_nodes.
    """
    check_draft_len(draft_len)
    check_tree_width(tree_width)
    check_int("budget", budget, what="draft tokens per step")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ConfigError(f"threshold must be in [0, 1) (smallest path value expanded), got {threshold!r}")

    def make_trees(drafter, last, limits, gens):
        return grow_dynamic(drafter, last, limits, rounds=draft_len, width=tree_width, budget=budget,
                            threshold=threshold, generators=gens)

    return decode_with_draft_trees("dyspec", model, prompt_ids, make_trees, rrs_without_replacement,
                                   sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
                                   stop=stop, stream=stream, draft=draft, draft_len=draft_len, stats=stats)


__all__ = ["dyspec"]
