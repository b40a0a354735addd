"""Tree verification: score a batch of draft trees in ONE target forward, walk each row's accepted path.

SpecInfer (Miao et al. 2024, *SpecInfer: Accelerating LLM Serving with Tree-based Speculative
Inference and Verification*) verifies a token tree with a tree attention mask; its multi-draft
rule is recursive rejection sampling (RRS), also used by RSD (Jeon et al. 2024).

Rule, at every node on the walk from the root: the target gives p there. Greedy: emit argmax p.
Sampled: try the node's draws x_1, x_2, … in the order they were drawn — accept x_i with
probability min(1, p(x_i) / q_i(x_i)), on rejection set p ← norm(max(0, p − q_i)) and go on;
when every draw is rejected, sample the residual p. q_i is the distribution x_i was drawn from
(`rrs`: the node's draft q for i.i.d. draws, a one-hot for fixed choices; `rrs_without_replacement`:
q with the earlier draws removed). Each emitted token is then distributed exactly as p. If the
emitted token has a child node in the tree the walk moves there (its p is already computed), else
the step ends with it as the final token. So every rule here is lossless; greedy equals plain greedy.

After the walk the target cache keeps exactly the root plus the accepted nodes: their keys and
values, computed with the path's positions and attention, are compacted to contiguous positions
(`TreeCache.select_positions`), or, for a cache without it, every other tree position is hidden.
Rows draw only from their own generator, so a row's output does not depend on its batch. A cache that
cannot hide rows runs a batch one row at a time (`chain.one_row_at_a_time`), as the chain loop does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ponder.errors import ConfigError, check_int
from ponder.kernels.sampling import SamplingParams, probs_from_logits
from ponder.kernels.tree import pack_trees, path_index, tree_mask
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import TreeCache, device_of, display_name
from ponder.search.decoding.chain import (
    MakeProposer,
    add_stats,
    one_row_at_a_time,
    open_loop,
    residual,
    rows_roll_back,
)
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.rollback import can_hide, truncate_rows

# (p [V] target probs at the node, q [V] draft probs the draws came from or None, draws, generator)
# -> the emitted token, distributed exactly as p
AcceptRule = Callable[[torch.Tensor, "torch.Tensor | None", Sequence[int], "torch.Generator | None"], int]


@dataclass
class DraftTree:
    """One row's draft tree. Node 0 is the root: the row's last emitted token, not yet fed.

    tokens[i], parents[i]: node i's token and parent (parents[0] = -1, parents[i] < i).
    draws: per node, the tokens drawn there in draw order (repeats allowed; may include tokens
        that were not added to the tree). None: each node's children in index order.
    q: [T, V] the distribution node i's draws were drawn from; None for fixed choices (top-k,
        copied n-grams), which the sampled rules treat as one-hot proposals.
    """

    tokens: list[int]
    parents: list[int]
    draws: list[list[int]] | None = None
    q: torch.Tensor | None = None
    _children: list[dict[int, int]] | None = field(default=None, repr=False)

    @classmethod
    def chain(cls, root: int, drafts: Sequence[int]) -> DraftTree:
        """A single path root -> d_1 -> ... -> d_k (what a chain drafter proposes)."""
        return cls([root, *drafts], list(range(-1, len(drafts))))

    def add(self, parent: int, token: int) -> int:
        """Append a child of `parent` holding `token`; returns its node index."""
        self.tokens.append(int(token))
        self.parents.append(parent)
        self._children = None
        return len(self.tokens) - 1

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, node: int) -> dict[int, int]:
        """token -> child node for `node` (the first child wins if two hold the same token)."""
        if self._children is None:
            self._children = [{} for _ in self.tokens]
            for child in range(1, len(self.tokens)):
                self._children[self.parents[child]].setdefault(self.tokens[child], child)
        return self._children[node]

    def node_draws(self, node: int) -> list[int]:
        """The tokens drawn at `node`, in draw order."""
        if self.draws is not None and node < len(self.draws):
            return list(self.draws[node])
        return [self.tokens[c] for c in range(node + 1, len(self.tokens)) if self.parents[c] == node]

    def depths(self) -> list[int]:
        depth = [0] * len(self.tokens)
        for node in range(1, len(self.tokens)):
            depth[node] = depth[self.parents[node]] + 1
        return depth

    def pruned(self, max_depth: int) -> DraftTree:
        """The tree without nodes deeper than `max_depth` (their draws stay, as untried-in-tree tokens)."""
        depth = self.depths()
        keep = [n for n in range(len(self.tokens)) if depth[n] <= max_depth]
        if len(keep) == len(self.tokens):
            return self
        new = {old: i for i, old in enumerate(keep)}
        draws = None if self.draws is None else [self.draws[n] if n < len(self.draws) else [] for n in keep]
        q = None if self.q is None else self.q[torch.tensor(keep, device=self.q.device)]
        return DraftTree([self.tokens[n] for n in keep], [new.get(self.parents[n], -1) for n in keep],
                         draws=draws, q=q)


class TreeProposer(Protocol):
    """Supplies draft trees for `tree_draft_and_verify`."""

    def propose(self, last: list[int], limits: list[int]) -> list[DraftTree]:
        """Given each row's last emitted token, one tree per row rooted at it, no deeper than
        limits[r] (a root-only tree is a plain step)."""
        ...

    def accepted(self, paths: list[list[int]], final: list[int]) -> None:
        """Row r accepted the draft tokens paths[r] (root excluded), then `final[r]` (not yet fed)."""
        ...

    # a `VerifiedHook` proposer also gets each verify pass's logits [B, T, V] (node order of the proposed
    # trees) before `accepted` — drafters that learn from every node (Token Recycling, lookahead)


# ---- acceptance rules ---------------------------------------------------------------------------------


def _uniform(generator) -> float:
    return float(torch.rand((), generator=generator))


def _rejected(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) for [V] vectors: the target for the next draw after a rejection."""
    rest = residual(p[None], q[None])[0]  # [V]
    return rest / rest.sum()


def _draw(p: torch.Tensor, generator) -> int:
    """One token from weights p [V] by the inverse CDF of one uniform from `generator`."""
    cumulative = p.cumsum(0)  # [V]
    target = _uniform(generator) * float(cumulative[-1])
    token = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=cumulative.dtype), right=True)[0])
    return min(token, int(p.nonzero()[-1]))  # rounding past the end: the last drawable token


def rrs(p: torch.Tensor, q: torch.Tensor | None, draws: Sequence[int], generator) -> int:
    """Recursive rejection sampling over draws made i.i.d. from q (or fixed choices when q is None)."""
    for token in draws:
        q_i = torch.zeros_like(p).index_fill_(0, torch.tensor([token]), 1.0) if q is None else q
        # q >= p: accept with probability p/q; q < p: always (u < 1 <= p/q)
        if _uniform(generator) * float(q_i[token]) < float(p[token]):
            return token
        p = _rejected(p, q_i)
    return _draw(p, generator)


def rrs_without_replacement(p: torch.Tensor, q: torch.Tensor | None, draws: Sequence[int], generator) -> int:
    """Recursive rejection sampling over draws made WITHOUT replacement from q (RSD, Gumbel-top-k):
    the i-th draw came from q with the earlier draws removed and renormalised."""
    if q is None:
        return rrs(p, None, draws, generator)
    q = q.clone()
    for token in draws:
        q_i = q / q.sum()
        if _uniform(generator) * float(q_i[token]) < float(p[token]):
            return token
        p = _rejected(p, q_i)
        q[token] = 0.0
        if float(q.sum()) <= 0:
            break
    return _draw(p, generator)


# ---- one verification step -----------------------------------------------------------------------------


def verify_trees(model: SequenceModel, cache, trees: Sequence[DraftTree]) -> torch.Tensor:
    """Feed every row's tree (root first) in one target forward with the tree attention mask.

    Returns logits [B, T, V] (T = largest tree); node i's logits predict the token after node i's
    path. The cache grows by T positions; call `keep_paths` after the walk.
    """
    tokens, parents = pack_trees([t.tokens for t in trees], [t.parents for t in trees])  # [B, T], [B, T]
    device = device_of(model)
    if all(t.parents == list(range(-1, len(t) - 1)) for t in trees) and len({len(t) for t in trees}) == 1:
        return model.forward(tokens.to(device), cache)  # equal chains: the causal mask is the tree mask
    mask = tree_mask(parents)  # [B, T, T]
    return model.forward(tokens.to(device), cache, attn_mask=mask.to(device))


def walk_trees(logits: torch.Tensor, trees: Sequence[DraftTree], sampling: SamplingParams, generators,
               rule: AcceptRule = rrs) -> tuple[list[list[int]], list[int]]:
    """Walk every row's tree from the root with the acceptance `rule` (greedy: argmax p).

    logits: [B, T, V] from `verify_trees`. Returns (paths, final): paths[r] the accepted node indices
    of row r, root (0) first; final[r] the token emitted after the path (not in the cache).
    """
    batch, size, vocab = logits.shape
    logits = logits.detach().cpu()
    paths, finals = [], []
    if sampling.greedy:
        best = logits.argmax(-1).tolist()  # [B, T]
        for row, tree in enumerate(trees):
            path = [0]
            while (child := tree.children(path[-1]).get(best[row][path[-1]])) is not None:
                path.append(child)
            paths.append(path)
            finals.append(best[row][path[-1]])
        return paths, finals
    probs = probs_from_logits(logits.reshape(-1, vocab), sampling).view(batch, size, vocab)  # [B, T, V]
    for row, tree in enumerate(trees):
        gen = None if generators is None else generators[row]
        path = [0]
        while True:
            node = path[-1]
            q = None if tree.q is None else tree.q[node].detach().float().cpu()
            token = rule(probs[row, node], q, tree.node_draws(node), gen)
            child = tree.children(node).get(token)
            if child is None:
                break
            path.append(child)
        paths.append(path)
        finals.append(token)
    return paths, finals


def keep_paths(cache, start: int, paths: Sequence[Sequence[int]]) -> None:
    """Roll the cache back to row r's accepted nodes paths[r] (offsets from `start`, root first).

    The path's positions are compacted to start .. start + len(path) (`cache.select_positions`), or,
    for a cache without it, every other tree position is hidden. Either way the row continues exactly
    as if only the path had been fed.
    """
    if all(list(p) == list(range(len(p))) for p in paths):  # every path is a prefix: plain rollback
        truncate_rows(cache, start, [len(p) for p in paths])
        return
    if isinstance(cache, TreeCache):
        cache.select_positions(start, path_index(paths))  # [B, N]
        truncate_rows(cache, start, [len(p) for p in paths])
        return
    hidden = torch.zeros((len(paths), cache.length), dtype=torch.bool)  # [B, L]
    hidden[:, start:] = True
    for row, path in enumerate(paths):
        hidden[row, [start + n for n in path]] = False
    cache.hide(hidden)


def check_tree_cache(model: SequenceModel) -> None:
    """ConfigError for a model whose cache can neither compact nor hide positions (no tree rollback)."""
    cache = model.new_cache()
    if not (isinstance(cache, TreeCache) or can_hide(cache)):
        raise ConfigError(f"tree decoders need a cache with select_positions or hide; "
                          f"{display_name(model, 'this model')!r} has neither (use --decoder speculative)")


def tree_draft_and_verify(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    make_proposer: MakeProposer,
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    rule: AcceptRule = rrs,
    stats: dict | None = None,
    draft: SequenceModel | None = None,
) -> Decoded:
    """The draft-tree-then-verify loop shared by every tree decoder.

    `make_proposer(LoopStart)` builds a `TreeProposer` after the prefill (once per row when the rows
    run one at a time: a cache of `model` or of `draft` that cannot hide rows). Each step verifies
    every row's tree in one target forward, walks it with `rule` (greedy when sampling is greedy),
    rolls the cache back to each row's accepted path, and emits the accepted tokens plus the final
    one. `stats`, when given, receives "steps" (verify forwards), "row_steps" (steps summed over
    active rows), "accepted" (draft tokens accepted) and "tree_nodes" (nodes verified, roots included).
    """
    check_tree_cache(model)
    compute = Compute()
    with compute.timed():
        def run(prompts, gens, stop, stream):
            return _tree_loop(model, prompts, make_proposer, sampling=sampling, max_new_tokens=max_new_tokens,
                              generators=gens, stop=stop, stream=stream, rule=rule, stats=stats, compute=compute)

        if len(prompt_ids) > 1 and not rows_roll_back(model, draft):
            return one_row_at_a_time(run, prompt_ids, generators=generators, stop=stop, stream=stream,
                                     compute=compute)
        return run(prompt_ids, generators, stop, stream)


def _tree_loop(model: SequenceModel, prompt_ids, make_proposer: MakeProposer, *, sampling: SamplingParams,
               max_new_tokens: int, generators, stop, stream, rule: AcceptRule, stats, compute: Compute) -> Decoded:
    out, cache, last, proposer, hook = open_loop(model, prompt_ids, make_proposer, sampling=sampling,
                                                 max_new_tokens=max_new_tokens, generators=generators, stop=stop,
                                                 stream=stream, compute=compute)
    if proposer is None:
        return out.decoded()
    steps = row_steps = accepted_total = nodes = 0
    while out.active:
        row_steps += len(out.active)
        limits = out.limits()
        trees = [t.pruned(limit) for t, limit in zip(proposer.propose(last, limits), limits)]
        for row, tree in enumerate(trees):
            if not tree.tokens or tree.tokens[0] != last[row] or tree.parents[0] != -1:
                raise ValueError(f"row {row}'s draft tree must be rooted at its last token {last[row]}")
        start = cache.length
        verify_logits = verify_trees(model, cache, trees)  # [B, T, V]
        compute.model_calls += 1
        paths, final = walk_trees(verify_logits, trees, sampling, generators, rule)
        keep_paths(cache, start, paths)
        if hook is not None:
            hook(verify_logits)
        proposer.accepted([[tree.tokens[n] for n in path[1:]] for tree, path in zip(trees, paths)], final)
        logp = torch.log_softmax(verify_logits.float(), -1).cpu()  # [B, T, V]
        steps += 1
        for row in sorted(out.active):
            tree, path = trees[row], paths[row]
            chosen = [tree.tokens[n] for n in path[1:]] + [final[row]]
            accepted_total += len(path) - 1
            nodes += len(tree)
            for node, token in zip(path, chosen):
                out.emit(row, token, float(logp[row, node, token]))
                if row not in out.active:
                    break
        last = final
    add_stats(stats, steps=steps, accepted=accepted_total, row_steps=row_steps, tree_nodes=nodes)
    return out.decoded()


def check_tree_width(tree_width) -> int:
    """ConfigError unless tree_width (children per node) is a positive integer."""
    check_int("tree_width", tree_width, what="children per node")
    return tree_width


__all__ = ["AcceptRule", "DraftTree", "TreeProposer", "check_tree_cache", "check_tree_width", "keep_paths",
           "rrs", "rrs_without_replacement", "tree_draft_and_verify", "verify_trees", "walk_trees"]
