"""Chimera decoding: a light draft reads the target's last hidden states and drafts autoregressively.

Zeng et al. 2024, *Chimera: A Lossless Decoding Method for Accelerating Large Language Models
Inference by Fusing all Tokens* (trigram encoder + full-context fusion over the target's last-layer
hidden states), drafted EAGLE-style (Li et al. 2024, *EAGLE: Speculative Sampling Requires Rethinking
Feature Uncertainty*). Rule: the draft keeps, per row, the pairs (h_j, x_{j+1}) of every position the
target has verified; after each verify forward it appends the accepted positions' real hidden states,
then drafts d_1..d_k by feeding back its own predicted hidden state and drafted token k - 1 times
(k draft calls per step, then its cache rolls back to the verified pairs). Verification is the
existing lossless rule: tree_width 1 verifies the chain by speculative sampling's rule
(`speculative.accept_drafts`: greedy equals plain greedy, sampled output is distributed as plain
sampling); tree_width w > 1 hangs each step's top-w tokens off the top-1 path (a sparse tree, k·w + 1
nodes, drafted by the same k calls) and verifies it in one forward by recursive rejection sampling over
fixed choices (`tree_verify.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import HiddenStateDraft, HiddenStateModel, display_name
from ponder.search.decoding.chain import LoopStart, check_draft_len, draw_draft
from ponder.search.decoding.medusa import decode_on_hidden_states
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import accept_drafts
from ponder.search.decoding.tree_verify import DraftTree, check_tree_width

DEFAULT_DRAFT_LEN = 5


class ChimeraProposer:
    """Chain drafts: top-1 (greedy) or one draw from the draft's distribution per step, fed back."""

    def __init__(self, draft: HiddenStateDraft, box: dict, start: LoopStart, sampling: SamplingParams,
                 draft_len: int):
        self.draft, self.box, self.sampling, self.generators = draft, box, sampling, start.generators
        self.draft_len, self.compute = draft_len, start.compute
        prompts = [list(p) for p in start.prompt_ids]
        self.batch = len(prompts)
        self.state = draft.begin([p[0] for p in prompts])
        hidden = box["hidden"]  # [B or 1, P, H]: the prefill, left-padded (one row when rows share it)
        if hidden.shape[0] != self.batch:
            hidden = hidden.expand(self.batch, -1, -1)
        width = hidden.shape[1]
        # pairs not yet in the draft's cache: row r's hidden states and the tokens after them; the token
        # after the last one is the one the target draws next (given to `propose` as `last`)
        self.pending = [hidden[r, width - len(p):] for r, p in enumerate(prompts)]  # [n_r, H] each
        self.pending_next = [p[1:] for p in prompts]
        self.committed = [0] * self.batch  # pairs per row in the draft's cache

    def _feed_pending(self, last: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Append every row's verified pairs; returns the draft's (logits [B, V], predicted state [B, H])."""
        counts = [len(h) for h in self.pending]
        ref = self.pending[0]
        hidden = ref.new_zeros((self.batch, max(counts), ref.shape[-1]))  # [B, W, H]
        after = torch.zeros((self.batch, max(counts)), dtype=torch.long)  # [B, W]
        for row, (states, tokens) in enumerate(zip(self.pending, self.pending_next)):
            hidden[row, :counts[row]] = states
            after[row, :counts[row]] = torch.as_tensor(list(tokens) + [last[row]], dtype=torch.long)
        self.compute.draft_calls += 1
        logits, predicted = self.draft.extend(self.state, hidden, after, counts)
        self.committed = [c + n for c, n in zip(self.committed, counts)]
        return logits, predicted

    def _draft_steps(self, last: list[int], depth: int, step):
        """Run `depth` drafting steps; step(k, logits [B, V]) -> the token [B] fed back at step k."""
        logits, predicted = self._feed_pending(last)
        for k in range(depth):
            token = step(k, logits)  # [B]
            if k + 1 < depth:
                self.compute.draft_calls += 1
                logits, predicted = self.draft.extend(self.state, predicted[:, None], token[:, None].cpu(),
                                                      [1] * self.batch)
        self.draft.rollback(self.state, self.committed)  # drop the drafted pairs

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        columns, probs = [], []

        def step(k, logits):
            drafting = [r for r in range(self.batch) if limits[r] > k]  # a row draws only what it can use
            token, q = draw_draft(logits, drafting, self.sampling, self.generators)  # [B], [B, V]
            columns.append(token.tolist())
            probs.append(q)
            return token

        self._draft_steps(last, min(self.draft_len, max(limits)), step)
        self.drafts = [[col[r] for col in columns][:limits[r]] for r in range(self.batch)]
        if not columns or self.sampling.greedy:
            return self.drafts, None
        return self.drafts, torch.stack(probs, 1)  # [B, m, V]

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        hidden = self.box["hidden"]  # [B, W, H] of the verify forward over [last, d_1 ..]
        self.pending = [hidden[r, :n + 1] for r, n in enumerate(num_accepted)]
        self.pending_next = [self.drafts[r][:n] for r, n in enumerate(num_accepted)]


class ChimeraTreeProposer(ChimeraProposer):
    """A sparse tree: each step's top-w tokens hang off the top-1 path; fixed choices (q = None)."""

    def __init__(self, *args, tree_width: int):
        super().__init__(*args)
        self.tree_width = tree_width

    def propose(self, last: list[int], limits: list[int]) -> list[DraftTree]:
        self.trees = [DraftTree([root], [-1]) for root in last]
        spines = [0] * self.batch

        def step(k, logits):
            top = logits.topk(min(self.tree_width, logits.shape[-1]), dim=-1).indices  # [B, w]
            for row, tree in enumerate(self.trees):
                if limits[row] > k:
                    children = [tree.add(spines[row], token) for token in top[row].tolist()]
                    spines[row] = children[0]  # the top-1 token carries the path on
            return top[:, 0]

        self._draft_steps(last, min(self.draft_len, max(limits)), step)
        return self.trees

    def accepted(self, paths: list[list[int]], final: list[int]) -> None:
        hidden = self.box["hidden"]  # [B, T, H] of the tree forward (node i at position i)
        self.pending, self.pending_next = [], []
        for row, (tree, path) in enumerate(zip(self.trees, paths)):
            nodes = [0]
            for token in path:
                nodes.append(tree.children(nodes[-1])[token])
            self.pending.append(hidden[row, nodes])
            self.pending_next.append(list(path))


def chimera(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft=None,
    draft_len: int = DEFAULT_DRAFT_LEN,
    tree_width: int = 1,
    stats: dict | None = None,
) -> Decoded:
    """Decode with a Chimera draft reading the target's own hidden states (lossless).

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`; the model
            must offer `capturing_hidden` (every `TextModel` does).
        draft: the Chimera draft trained for `model` (``--draft zoo:arith-chimera``).
        draft_len: tokens drafted per step (draft calls per step; the shipped draft was trained for 5).
        tree_width: 1 drafts a chain; w > 1 also verifies each step's top-w tokens (a sparse tree).
        stats: optional dict; receives "steps", "accepted", "row_steps" (and "tree_nodes" for trees).
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model`; greedy equals plain greedy.
    """
    if not isinstance(draft, HiddenStateDraft):
        raise ConfigError("decoder 'chimera' needs a Chimera draft trained for the target as --draft "
                          f"(e.g. zoo:arith-chimera), got {display_name(draft, draft)!r}")
    if not isinstance(model, HiddenStateModel):
        raise ConfigError(f"decoder 'chimera' reads the target's hidden states; {display_name(model)!r} "
                          "cannot expose them")
    draft_len = check_draft_len(draft_len)
    tree_width = check_tree_width(tree_width)

    return decode_on_hidden_states(
        model, prompt_ids, draft, f"Chimera draft {display_name(draft, '')!r} reads",
        "a draft works only with the target it was trained on",
        lambda start, box: ChimeraProposer(draft, box, start, sampling, draft_len),
        lambda start, box: ChimeraTreeProposer(draft, box, start, sampling, draft_len, tree_width=tree_width),
        tree_width=tree_width, accept=accept_drafts, sampling=sampling, max_new_tokens=max_new_tokens,
        generators=generators, stop=stop, stream=stream, stats=stats)

__all__ = ["DEFAULT_DRAFT_LEN", "ChimeraProposer", "ChimeraTreeProposer", "chimera"]
