"""Static top-k draft tree (Medusa / EAGLE style), verified in one target forward.

Cai et al. 2024, *Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding Heads*;
Li et al. 2024, *EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty* — here the
candidates come from a draft model instead of heads.

Rule: the draft model expands a tree of fixed shape: every node at depth d gets the top
`branching[d]` tokens of the draft's distribution as children (default: the top `tree_width` at the
root, then the top 1 — `tree_width` chains, `draft_len` deep; verification cost grows with every
node, so the default spends nodes where the draft is least sure, the first token). One target
forward scores the whole tree (`tree_verify`). Greedy walks the target's argmax — exactly plain
greedy. Sampled: the top-k children are fixed choices, so they are
verified as one-hot proposals by recursive rejection sampling: child x is accepted with probability
p'(x), where p' is the target's p with the already rejected siblings removed and renormalised; if
none is accepted the token is drawn from that residual. Each emitted token is therefore distributed
exactly as p: **lossless**.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import check_draft_len
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.tree_draft import decode_with_draft_trees, grow_by_level, top_children
from ponder.search.decoding.tree_verify import check_tree_width, rrs


def check_branching(branching) -> tuple[int, ...]:
    """ConfigError unless branching is a non-empty sequence of positive integers."""
    if not isinstance(branching, (list, tuple)) or not branching or any(
            isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in branching):
        raise ConfigError(f"branching must be a non-empty list of positive integers (children per node at "
                          f"each depth), got {branching!r}")
    return tuple(branching)


def default_branching(tree_width: int, draft_len: int) -> tuple[int, ...]:
    """`tree_width` children at the root, one below: (tree_width, 1, ..., 1), draft_len entries."""
    return (tree_width,) + (1,) * (draft_len - 1)


def tree(
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
    """Lossless decoding from `model` with a static top-k draft tree from `draft`.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: the draft `SequenceModel` (same tokenizer); required.
        draft_len: tree depth (draft tokens on the longest path), a positive integer.
        tree_width: children of the root (the draft's top-k); deeper nodes get one, a positive integer.
        branching: children per node at each depth, overriding draft_len / tree_width (e.g. [4, 2, 1, 1]).
        stats: optional dict receiving steps / row_steps / accepted / tree_nodes.
    Returns:
        `Decoded`; one target call per step, `draft_len` draft calls per step.
    """
    check_draft_len(draft_len)
    check_tree_width(tree_width)
    shape = check_branching(list(branching)) if branching is not None else default_branching(tree_width, draft_len)

    def make_trees(drafter, last, limits, gens):
        return grow_by_level(drafter, last, limits, shape, lambda q, width, row: top_children(q, width),
                             keep_q=False)

    return decode_with_draft_trees("tree", model, prompt_ids, make_trees, rrs, sampling=sampling,
                                   max_new_tokens=max_new_tokens, generators=generators, stop=stop,
                                   stream=stream, draft=draft, draft_len=len(shape), stats=stats)


__all__ = ["check_branching", "default_branching", "tree"]
