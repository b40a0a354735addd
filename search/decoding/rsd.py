"""Recursive Speculative Decoding: a draft tree sampled without replacement, verified by recursive rejection.

Jeon et al. 2024, *Recursive Speculative Decoding: Accelerating LLM Inference via Sampling Without
Replacement* (RSD-C: a constant branching factor per depth).

Rule: every node at depth d draws `branching[d]` distinct children from the draft's q by Gumbel-top-k
(sampling without replacement; the i-th child comes from q with the earlier ones removed and
renormalised, q_i). One target forward scores the tree. At each node on the walk the children are
tried in draw order: accept x_i with probability min(1, p(x_i) / q_i(x_i)); on rejection
p ← norm(max(0, p − q_i)); if all are rejected, draw from the residual p. Distinct siblings waste no
verification on duplicates, and the recursion keeps every emitted token distributed exactly as the
target's p: **lossless**. Default shape: `tree_width` children at the root, one below (as `tree`).
Greedy: the children are the draft's top-k and the walk follows the target's argmax (plain greedy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import check_draft_len
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.tree import check_branching, default_branching
from ponder.search.decoding.tree_draft import decode_with_draft_trees, grow_by_level, gumbel_top_k, top_children
from ponder.search.decoding.tree_verify import check_tree_width, rrs_without_replacement


def rsd(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    draft_len: int = 4,
    tree_width: int = 2,
    branching: Sequence[int] | None = None,
    stats: dict | None = None,
) -> Decoded:
    """Lossless RSD-C decoding from `model`: Gumbel-top-k draft trees + recursive rejection sampling.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: the draft `SequenceModel` (same tokenizer); required.
        draft_len: tree depth, a positive integer.
        tree_width: children drawn at the root (without replacement); one below, a positive integer.
        branching: children drawn per node at each depth, overriding draft_len / tree_width.
        stats: optional dict receiving steps / row_steps / accepted / tree_nodes.
    """
    check_draft_len(draft_len)
    check_tree_width(tree_width)
    shape = check_branching(list(branching)) if branching is not None else default_branching(tree_width, draft_len)

    def make_trees(drafter, last, limits, gens):
        def choose(q, width, row):
            if drafter.sampling.greedy:
                return top_children(q, width)
            return gumbel_top_k(q, width, None if gens is None else gens[row])

        return grow_by_level(drafter, last, limits, shape, choose, keep_q=True)

    return decode_with_draft_trees("rsd", model, prompt_ids, make_trees, rrs_without_replacement,
                                   sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
                                   stop=stop, stream=stream, draft=draft, draft_len=len(shape), stats=stats)


__all__ = ["rsd"]
