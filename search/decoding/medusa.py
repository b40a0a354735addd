"""Medusa decoding: extra heads on the target's last hidden state draft the next few tokens.

Cai, Li, Geng, Peng, Lee, Chen and Dao 2024, *Medusa: Simple LLM Inference Acceleration Framework
with Multiple Decoding Heads*. Rule: the hidden state h that produced the last token also feeds K
heads; head k proposes token t+k+1. No draft model runs: the drafts of a step come from the hidden
state of the previous verify forward (the position whose logits gave the final token).
Acceptance "rejection" (lossless): with tree_width 1 the heads' top-1 tokens (greedy) or draws
from their distributions (sampled) form a chain verified by speculative sampling's rule
(`speculative.py`); with tree_width w > 1 each head's top-w tokens branch off the top-1 path (a
sparse Medusa tree, K·w + 1 nodes) verified in one forward by recursive rejection sampling over
fixed choices (`tree_verify.py`). Acceptance "typical" (Medusa's typical acceptance, LOSSY): accept
draft d_j while p_j(d_j) > min(ε, δ·exp(−H(p_j))), then sample the next token from p — faster at
high temperature, but the output is no longer distributed as plain sampling's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ponder.errors import ConfigError
from ponder.kernels.sampling import SamplingParams, probs_from_logits, sample
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.core.capabilities import HiddenStateModel, MedusaDraft, display_name
from ponder.search.decoding.chain import LoopStart, draft_and_verify, draw_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.speculative import accept_drafts
from ponder.search.decoding.tree_verify import DraftTree, check_tree_width, tree_draft_and_verify

ACCEPTANCE = ("rejection", "typical")


def typical_rule(epsilon: float, delta: float):
    """Medusa's typical acceptance as an `accept_drafts`-shaped rule (LOSSY).

    Accept d_j while p_j(d_j) > min(ε, δ·exp(−H(p_j))) (p after temperature / top-k / top-p), then
    draw the next token from p at the first refused position (or the bonus position). Greedy: exact
    match, as in plain greedy."""

    def accept(logits, drafts, draft_probs, sampling, generators):
        if sampling.greedy:
            return accept_drafts(logits, drafts, None, sampling, generators)
        batch, _, vocab = logits.shape
        lengths = torch.tensor([len(d) for d in drafts])  # [B]
        longest = int(lengths.max()) if batch else 0
        p = probs_from_logits(logits[:, :longest + 1].cpu().reshape(-1, vocab), sampling)
        p = p.view(batch, longest + 1, vocab)  # [B, K+1, V]
        ids = torch.zeros((batch, max(longest, 1)), dtype=torch.long)  # [B, K]
        for row, tokens in enumerate(drafts):
            ids[row, :len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
        ids = ids[:, :longest]
        p_draft = p[:, :longest].gather(2, ids[..., None])[..., 0]  # [B, K]
        entropy = -(p[:, :longest] * p[:, :longest].clamp_min(1e-12).log()).sum(-1)  # [B, K]
        bound = torch.minimum(torch.full_like(entropy, epsilon), delta * torch.exp(-entropy))  # [B, K]
        valid = torch.arange(longest)[None, :] < lengths[:, None]  # [B, K]
        num_accepted = ((p_draft > bound) & valid).long().cumprod(1).sum(1)  # [B]
        return num_accepted, sample(p[torch.arange(batch), num_accepted], generators)

    return accept


class MedusaProposer:
    """Chain drafts from the heads: top-1 (greedy) or one draw per head from its distribution."""

    def __init__(self, heads, box: dict, batch: int, sampling: SamplingParams, generators, draft_len: int):
        self.heads, self.box, self.sampling, self.generators = heads, box, sampling, generators
        self.draft_len = draft_len
        hidden = box["hidden"][:, -1]  # [B or 1, H]: the prefill's last position gave the first token
        self.hidden = hidden.expand(batch, -1) if hidden.shape[0] != batch else hidden  # [B, H]

    def propose(self, last: list[int], limits: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        logits = self.heads.head_logits(self.hidden)[:, :self.draft_len]  # [B, K, V]
        columns, probs = [], []
        for k in range(logits.shape[1]):
            drafting = [r for r in range(len(last)) if limits[r] > k]  # a row draws only what it can use
            if not drafting:
                break
            token, q = draw_draft(logits[:, k], drafting, self.sampling, self.generators)  # [B], [B, V]
            columns.append(token.tolist())
            probs.append(q)
        self.drafts = [[col[r] for col in columns][:limits[r]] for r in range(len(last))]
        if not columns or self.sampling.greedy:
            return self.drafts, None
        return self.drafts, torch.stack(probs, 1)  # [B, m, V]

    def accepted(self, num_accepted: list[int], final: list[int]) -> None:
        hidden = self.box["hidden"]  # [B, W, H] of the verify forward
        self.hidden = hidden[torch.arange(hidden.shape[0]), torch.tensor(num_accepted)]  # [B, H]


class MedusaTreeProposer(MedusaProposer):
    """A sparse tree: each head's top-w tokens hang off the top-1 path; fixed choices (q = None)."""

    def __init__(self, *args, tree_width: int):
        super().__init__(*args)
        self.tree_width = tree_width

    def propose(self, last: list[int], limits: list[int]) -> list[DraftTree]:
        logits = self.heads.head_logits(self.hidden)[:, :self.draft_len]  # [B, K, V]
        top = logits.topk(min(self.tree_width, logits.shape[-1]), dim=-1).indices.tolist()  # [B, K, w]
        self.trees = []
        for row, root in enumerate(last):
            tree, spine = DraftTree([root], [-1]), 0
            for k in range(min(limits[row], logits.shape[1])):
                children = [tree.add(spine, token) for token in top[row][k]]
                spine = children[0]  # the top-1 token carries the path on
            self.trees.append(tree)
        return self.trees

    def accepted(self, paths: list[list[int]], final: list[int]) -> None:
        hidden = self.box["hidden"]  # [B, T, H] of the tree forward (node i at position i)
        nodes = []
        for tree, path in zip(self.trees, paths):
            node = 0
            for token in path:
                node = tree.children(node)[token]
            nodes.append(node)
        self.hidden = hidden[torch.arange(hidden.shape[0]), torch.tensor(nodes)]  # [B, H]


def medusa(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft=None,
    draft_len: int | None = None,
    tree_width: int = 1,
    acceptance: str = "rejection",
    typical_epsilon: float = 0.3,
    typical_delta: float = 0.09,
    stats: dict | None = None,
) -> Decoded:
    """Decode with Medusa heads drafting from the target's own hidden states.

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`; the model
            must offer `capturing_hidden` (every `TextModel` does).
        draft: the Medusa heads trained for `model` (``--draft zoo:arith-medusa``).
        draft_len: heads used per step (default: all of them).
        tree_width: 1 drafts a chain; w > 1 verifies each head's top-w tokens as a tree (lossless).
        acceptance: "rejection" (lossless) or "typical" (LOSSY, chain only).
        typical_epsilon, typical_delta: typical acceptance's ε (hard bound) and δ (entropy-scaled bound).
        stats: optional dict; receives "steps", "accepted", "row_steps" (and "tree_nodes" for trees).
    Returns:
        `Decoded`. "rejection": distributed exactly as plain sampling from `model`, greedy equals plain
        greedy. "typical": greedy equals plain greedy; sampled output is biased toward likely tokens.
    """
    if not isinstance(draft, MedusaDraft):
        raise ConfigError("decoder 'medusa' needs Medusa heads trained for the target as --draft "
                          f"(e.g. zoo:arith-medusa), got {display_name(draft, draft)!r}")
    if not isinstance(model, HiddenStateModel):
        raise ConfigError(f"decoder 'medusa' reads the target's hidden states; {display_name(model)!r} "
                          "cannot expose them")
    if draft_len is None:
        draft_len = draft.num_heads
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or not 1 <= draft_len <= draft.num_heads:
        raise ConfigError(f"draft_len for medusa must be an integer in [1, {draft.num_heads}] (the heads there are), "
                          f"got {draft_len!r}")
    tree_width = check_tree_width(tree_width)
    if acceptance not in ACCEPTANCE:
        raise ConfigError(f"acceptance must be one of {', '.join(ACCEPTANCE)} (typical is lossy), got {acceptance!r}")
    if acceptance == "typical" and tree_width > 1:
        raise ConfigError("typical acceptance verifies a chain; use tree_width 1 with acceptance 'typical'")
    for key, value in (("typical_epsilon", typical_epsilon), ("typical_delta", typical_delta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{key} must be in (0, 1), got {value!r}")

    rule = typical_rule(typical_epsilon, typical_delta) if acceptance == "typical" else accept_drafts
    return decode_on_hidden_states(
        model, prompt_ids, draft, f"Medusa heads {display_name(draft, '')!r} read",
        "heads work only with the target they were trained on",
        lambda start, box: MedusaProposer(draft, box, len(start.prompt_ids), sampling, start.generators, draft_len),
        lambda start, box: MedusaTreeProposer(draft, box, len(start.prompt_ids), sampling, start.generators,
                                              draft_len, tree_width=tree_width),
        tree_width=tree_width, accept=rule, sampling=sampling, max_new_tokens=max_new_tokens, generators=generators,
        stop=stop, stream=stream, stats=stats)


def decode_on_hidden_states(model: HiddenStateModel, prompt_ids: Sequence[Sequence[int]], draft, subject: str,
                            rule: str, make_chain: Callable, make_tree: Callable, *, tree_width: int, accept,
                            **loop) -> Decoded:
    """The loop of a drafter that reads the target's last hidden states (Medusa heads, a Chimera draft):
    the target runs inside `capturing_hidden`, each proposer is built by make_chain(start, box) (chain
    verification with `accept`) or, for tree_width > 1, make_tree(start, box) (tree verification), and
    a draft whose hidden size differs from the target's is one ConfigError:
    "{subject} hidden size H, but MODEL has W: {rule}"."""
    with model.capturing_hidden() as box:
        def check() -> None:
            width = box["hidden"].shape[-1]
            if width != draft.hidden_size:
                raise ConfigError(f"{subject} hidden size {draft.hidden_size}, but "
                                  f"{display_name(model, 'the model')!r} has {width}: {rule}")

        def checked(make: Callable) -> Callable[[LoopStart], object]:
            def build(start: LoopStart):
                check()
                return make(start, box)
            return build

        if tree_width > 1:
            return tree_draft_and_verify(model, prompt_ids, checked(make_tree), **loop)
        return draft_and_verify(model, prompt_ids, checked(make_chain), accept=accept, **loop)

__all__ = ["ACCEPTANCE", "MedusaProposer", "MedusaTreeProposer", "decode_on_hidden_states", "medusa",
           "typical_rule"]
