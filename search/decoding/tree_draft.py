"""Growing draft trees with a draft model — the part the tree decoders (tree, dyspec, rsd, spectr) share.

The draft model keeps its own cache holding the accepted context. Each step feeds the accepted
tokens it has not seen plus the row's last token (the tree root) in one draft forward, which
gives the root's draft distribution. Each further round re-feeds every row's tree-so-far (all
nodes below the root) in one draft forward with the tree attention mask and reads the draft
distribution at the nodes asked for; the cache is truncated back to the root afterwards, so a
round costs one draft call whatever the tree's width. The decoders differ only in which children
they add: the top-k, draws with or without replacement, or a budgeted best-first expansion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ponder.kernels.sampling import SamplingParams, probs_from_logits, sample
from ponder.kernels.tree import pack_trees, tree_mask
from ponder.search.core import Compute, Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import device_of
from ponder.search.decoding.chain import LoopStart, check_draft_len, check_same_tokenizer, fit_vocab, require_draft
from ponder.search.decoding.outputs import StopFn, prefill_shared
from ponder.search.decoding.rollback import feed_rows
from ponder.search.decoding.tree_verify import AcceptRule, DraftTree, tree_draft_and_verify


class DraftTreeModel:
    """A draft model that scores the nodes of growing draft trees (see the module docstring)."""

    def __init__(self, draft: SequenceModel, prompt_ids, compute: Compute, *, sampling: SamplingParams,
                 vocab: int):
        self.draft, self.sampling, self.vocab, self.compute = draft, sampling, vocab, compute
        self.cache = draft.new_cache()
        prefill_shared(draft, prompt_ids, self.cache)
        compute.draft_calls += 1
        self.pending: list[list[int]] = [[] for _ in prompt_ids]  # accepted tokens the draft has not seen

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft distribution [N, V] from draft logits [N, V_d]: the sampling-processed q, or, when
        greedy, the plain softmax (whose order gives the top-k and whose values rank nodes)."""
        logits = fit_vocab(logits.float(), self.vocab).cpu()
        if self.sampling.greedy:
            return logits.softmax(-1)
        return probs_from_logits(logits, self.sampling)

    def root(self, last: Sequence[int]) -> torch.Tensor:
        """Feed each row's unseen accepted tokens and its last token; q at the roots [B, V]."""
        rows = [pending + [token] for pending, token in zip(self.pending, last)]
        logits = feed_rows(self.draft, self.cache, rows)  # [B, W, V_d]
        self.compute.draft_calls += 1
        self.base = self.cache.length
        self.fed: list[int] | None = [0] * len(rows)  # chain nodes past the root in the cache, per row
        ends = torch.tensor([len(r) - 1 for r in rows], device=logits.device)
        return self.probs(logits[torch.arange(len(rows), device=logits.device), ends])  # [B, V]

    def score(self, trees: Sequence[DraftTree], nodes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """q at nodes[r] of trees[r] (none of them a root): one draft forward over every tree's non-root
        nodes. Returns per row a [len(nodes[r]), V] tensor.

        While every row's tree is still a chain, its nodes stay in the cache and only the new ones
        are fed (causal, as a chain drafter would); a branching tree is re-fed whole with its mask."""
        fed = self.fed
        if fed is not None and all(t.parents == list(range(-1, len(t) - 1)) and len(t) - 1 > f
                                   for t, f in zip(trees, fed)):
            logits = feed_rows(self.draft, self.cache, [t.tokens[1 + f:] for t, f in zip(trees, fed)])  # [B, W, V_d]
            self.compute.draft_calls += 1
            self.fed = [len(t) - 1 for t in trees]
            return [self.probs(logits[row, torch.tensor([n - 1 - f for n in wanted], dtype=torch.long,
                                                         device=logits.device)])
                    if len(wanted) else torch.zeros((0, self.vocab)) for row, (wanted, f) in enumerate(zip(nodes, fed))]
        self.cache.truncate(self.base)
        self.fed = None
        tokens = [t.tokens[1:] or [0] for t in trees]
        parents = [[p - 1 for p in t.parents[1:]] or [-1] for t in trees]  # the root is in the cache: -1
        ids, par = pack_trees(tokens, parents)  # [B, T-1]
        device = device_of(self.draft)
        logits = self.draft.forward(ids.to(device), self.cache, attn_mask=tree_mask(par).to(device))  # [B, T-1, V_d]
        self.compute.draft_calls += 1
        self.cache.truncate(self.base)
        out = []
        for row, wanted in enumerate(nodes):
            index = torch.tensor([n - 1 for n in wanted], dtype=torch.long, device=logits.device)
            out.append(self.probs(logits[row, index]) if len(wanted) else torch.zeros((0, self.vocab)))
        return out

    def accepted(self, paths: list[list[int]]) -> None:
        """Row r accepted the draft tokens paths[r]; they are fed with the next root."""
        self.cache.truncate(self.base)  # context + root; the tree rounds were rolled back already
        self.pending = [list(p) for p in paths]


def top_children(q: torch.Tensor, k: int) -> list[int]:
    """The k most likely tokens of q [V] that have positive probability, most likely first."""
    values, tokens = q.topk(min(k, q.shape[0]))
    return [int(t) for t, v in zip(tokens, values) if v > 0]


def gumbel_top_k(q: torch.Tensor, k: int, generator) -> list[int]:
    """k tokens drawn WITHOUT replacement from q [V], in draw order (Gumbel-top-k, Kool et al. 2019):
    the k largest log q + Gumbel noise. Consumes V uniforms from `generator`."""
    uniforms = torch.rand(q.shape[0], generator=generator).clamp(min=1e-12)  # [V]
    keys = q.log() - torch.log(-torch.log(uniforms))  # [V]; -inf where q = 0
    values, tokens = keys.topk(min(k, q.shape[0]))
    return [int(t) for t, v in zip(tokens, values) if v > float("-inf")]


def iid_draws(q: torch.Tensor, count: int, generator) -> list[int]:
    """`count` tokens drawn i.i.d. (with replacement) from q [V], one uniform each."""
    if count == 0:
        return []
    return sample(q[None].expand(count, -1), None if generator is None else [generator] * count).tolist()


def stack_q(size: int, rows: dict[int, torch.Tensor], vocab: int) -> torch.Tensor:
    """[T, V] draft distributions: rows[node] where a node drew children, zeros elsewhere."""
    q = torch.zeros((size, vocab))
    for node, row in rows.items():
        q[node] = row
    return q


def grow_by_level(drafter: DraftTreeModel, last: list[int], limits: list[int], widths: Sequence[int], choose,
                  *, keep_q: bool, multiplicity: bool = False) -> list[DraftTree]:
    """Grow one tree per row level by level, one draft call per level below the root.

    At level d every frontier node draws `choose(q, width, row)` tokens (draw order, repeats allowed)
    from its draft distribution q [V]; the distinct ones become its children. width is widths[d], or,
    with `multiplicity`, how many of its parent's draws chose the node (widths[0] at the root): k
    i.i.d. sequences share their common prefixes. keep_q stores each node's q in the tree (for the
    sampled acceptance rules); rows stop at depth limits[r].
    """
    trees = [DraftTree([token], [-1], draws=[[]]) for token in last]
    used_q: list[dict[int, torch.Tensor]] = [{} for _ in trees]  # node -> q its draws came from
    frontier = [[(0, widths[0])] if limit > 0 else [] for limit in limits]  # (node, width)
    q_front = [q[None] for q in drafter.root(last)]  # per row [len(frontier), V]
    for level in range(len(widths)):
        grown: list[list[tuple[int, int]]] = [[] for _ in trees]
        for row, tree in enumerate(trees):
            if level + 1 > limits[row]:
                continue
            for i, (node, width) in enumerate(frontier[row]):
                q = q_front[row][i]
                draws = choose(q, width, row)
                tree.draws[node] = draws
                if keep_q:
                    used_q[row][node] = q
                for token in dict.fromkeys(draws):  # distinct, in draw order
                    child = tree.add(node, token)
                    tree.draws.append([])
                    nxt = level + 1 if level + 1 < len(widths) else level
                    grown[row].append((child, draws.count(token) if multiplicity else widths[nxt]))
        frontier = grown
        if level + 1 == len(widths) or not any(frontier):
            break
        q_front = drafter.score(trees, [[node for node, _ in f] for f in frontier])
    if keep_q:
        for tree, rows in zip(trees, used_q):
            tree.q = stack_q(len(tree), rows, drafter.vocab)  # [T, V]
    return trees


def decode_with_draft_trees(
    name: str,
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    make_trees: Callable,
    rule: AcceptRule,
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None,
    stop: StopFn | None,
    stream: StreamCallback | None,
    draft: SequenceModel | None,
    draft_len: int,
    stats: dict | None,
) -> Decoded:
    """Shared entry of the draft-model tree decoders: the draft checks, then the tree loop.

    make_trees(drafter, last, limits, generators) -> list[DraftTree] grows one step's trees from a
    `DraftTreeModel` (generators: the rows' own, as the loop runs them).
    """
    check_draft_len(draft_len)
    require_draft(name, draft)
    check_same_tokenizer(model, draft)

    def make_proposer(start: LoopStart) -> DraftTreeProposer:
        drafter = DraftTreeModel(draft, start.prompt_ids, start.compute, sampling=sampling, vocab=start.vocab)
        return DraftTreeProposer(drafter, make_trees, start.generators)

    return tree_draft_and_verify(model, prompt_ids, make_proposer, sampling=sampling, max_new_tokens=max_new_tokens,
                                 generators=generators, stop=stop, stream=stream, rule=rule, stats=stats, draft=draft)


class DraftTreeProposer:
    """A `TreeProposer` that grows each step's trees with `make_trees` over a `DraftTreeModel`."""

    def __init__(self, drafter: DraftTreeModel, make_trees, generators):
        self.drafter, self.make_trees, self.generators = drafter, make_trees, generators

    def propose(self, last: list[int], limits: list[int]) -> list[DraftTree]:
        return self.make_trees(self.drafter, last, limits, self.generators)

    def accepted(self, paths: list[list[int]], final: list[int]) -> None:
        self.drafter.accepted(paths)


__all__ = ["DraftTreeModel", "DraftTreeProposer", "decode_with_draft_trees", "grow_by_level", "gumbel_top_k",
           "iid_draws", "stack_q", "top_children"]
