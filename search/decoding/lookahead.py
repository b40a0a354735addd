"""Lookahead decoding: Jacobi iterations make n-grams, the same forward verifies earlier ones.

Fu, Bailis, Stoica and Zhang 2024, *Break the Sequential Dependency of LLM Inference Using
Lookahead Decoding*. No draft model: the target itself guesses future tokens by Jacobi iteration
in a *lookahead branch*, and a *verification branch* checks n-grams collected from those guesses.

Rule: a window of N−1 levels × W columns of guessed tokens rides along every forward. Token
(level j, column i) sees the last token, level 0's columns 0..i and levels 1..j−1 of column i, at
position i + j + 1 past the last token; so the window is a token tree rooted at the last token
(level 0 a chain, each column a branch off it) and one tree forward serves both branches. The
target's argmax at the top level's column i is the column's next guess; each column's levels plus
that guess form an N-gram (first token → the N−1 after it) stored in the pool, and the window
shifts up one level. Pool n-grams starting with the last token (at most G) are merged into a trie
under the root — the verification branch. The tree walk (`tree_verify`: greedy exact match, or
recursive rejection sampling with one-hot proposals) accepts the longest matching path, so the
output is lossless; guesses are argmax whatever the sampling, so drafts never touch a row's RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ponder.kernels.sampling import SamplingParams
from ponder.kernels.tree import trie_from_paths
from ponder.search.core import Decoded, SequenceModel, StreamCallback
from ponder.search.decoding.chain import LoopStart, check_count, refuse_draft
from ponder.search.decoding.outputs import StopFn
from ponder.search.decoding.tree_verify import DraftTree, tree_draft_and_verify


class NgramPool:
    """key token -> up to `capacity` continuations (N−1 tokens each), most recent first, no repeats."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.grams: dict[int, list[tuple[int, ...]]] = {}

    def add(self, key: int, gram: Sequence[int]) -> None:
        gram = tuple(int(t) for t in gram)
        entries = self.grams.setdefault(int(key), [])
        if gram in entries:
            entries.remove(gram)
        entries.insert(0, gram)
        del entries[self.capacity:]

    def get(self, key: int) -> list[tuple[int, ...]]:
        return list(self.grams.get(int(key), []))


class LookaheadWindow:
    """One row's Jacobi window (levels × W guesses) and its n-gram pool."""

    def __init__(self, prompt: Sequence[int], *, window: int, ngram: int, guesses: int):
        self.window, self.ngram, self.guesses = window, ngram, guesses
        seed = list(prompt)[-window:] or [0]
        self.levels: list[list[int]] = [[seed[i % len(seed)] for i in range(window)]]  # level 0 from the prompt
        self.pool = NgramPool(guesses)

    def tree(self, root: int, limit: int) -> tuple[DraftTree, list[int] | None]:
        """The step's tree: verification trie first, then the lookahead window; also the node index of
        each top-level column (None when the window does not fit under `limit` and is left out)."""
        paths = [gram[:limit] for gram in self.pool.get(root)[:self.guesses]] if limit else []
        tokens, parents = trie_from_paths(root, paths)
        tree = DraftTree(tokens, parents)
        if self.window + len(self.levels) - 1 > limit:  # the deepest guess must fit the token budget
            return tree, None
        column_nodes = []
        previous = 0
        level0 = []
        for token in self.levels[0]:  # level 0: a chain under the root
            previous = tree.add(previous, token)
            level0.append(previous)
        for i in range(self.window):  # levels 1..: each column a branch off its level-0 token
            node = level0[i]
            for level in self.levels[1:]:
                node = tree.add(node, level[i])
            column_nodes.append(node)
        return tree, column_nodes

    def advance(self, guesses: list[int]) -> None:
        """Take the top level's new guesses: store every column's n-gram once the window is full,
        then shift the window up one level."""
        if len(self.levels) == self.ngram - 1:
            for i in range(self.window):
                column = [level[i] for level in self.levels] + [guesses[i]]  # N tokens
                self.pool.add(column[0], column[1:])
            self.levels = self.levels[1:]
        self.levels.append(list(guesses))


class LookaheadProposer:
    """Per-row windows; reads the verify pass's logits at the window's top level."""

    def __init__(self, prompt_ids: Sequence[Sequence[int]], *, window: int, ngram: int, guesses: int):
        self.rows = [LookaheadWindow(p, window=window, ngram=ngram, guesses=guesses) for p in prompt_ids]
        self.columns: list[list[int] | None] = []

    def propose(self, last: list[int], limits: list[int]) -> list[DraftTree]:
        built = [row.tree(token, limit) for row, token, limit in zip(self.rows, last, limits)]
        self.columns = [columns for _, columns in built]  # read once by `verified`
        return [tree for tree, _ in built]

    def verified(self, logits: torch.Tensor) -> None:
        """logits [B, T, V]: each row's top-level columns give the window's next guesses (argmax).
        Acts once per proposed step, however many times it is handed the step's logits."""
        columns, self.columns = self.columns, []
        for row, (window, nodes) in enumerate(zip(self.rows, columns)):
            if nodes is not None:
                window.advance(logits[row, torch.tensor(nodes, device=logits.device)].argmax(-1).tolist())

    def accepted(self, paths: list[list[int]], final: list[int]) -> None:
        pass  # the window is a guess of the future; it keeps iterating whatever was accepted


def lookahead(
    model: SequenceModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    sampling: SamplingParams,
    max_new_tokens: int,
    generators: list[torch.Generator] | None = None,
    stop: StopFn | None = None,
    stream: StreamCallback | None = None,
    draft: SequenceModel | None = None,
    window: int = 4,
    ngram: int = 3,
    guesses: int = 4,
    stats: dict | None = None,
) -> Decoded:
    """Lossless lookahead decoding from `model` (Fu et al. 2024; no draft model).

    Args:
        model, prompt_ids, sampling, max_new_tokens, generators, stop, stream: as in `plain`.
        draft: must be None (the target drafts for itself).
        window: W, Jacobi guesses per level (columns), an integer ≥ 1.
        ngram: N, n-gram size (the window keeps N−1 levels), an integer ≥ 2.
        guesses: G, most pool n-grams verified per step (and kept per first token), an integer ≥ 1.
        stats: optional dict that receives "steps", "row_steps", "accepted" and "tree_nodes".
    Returns:
        `Decoded`, distributed exactly as plain sampling from `model` (greedy: identical tokens).
    """
    window = check_count("window", window, "Jacobi guesses per level")
    ngram = check_count("ngram", ngram, "n-gram size", low=2)
    guesses = check_count("guesses", guesses, "n-grams verified per step")
    refuse_draft("lookahead", draft, "with the target itself")

    def make_proposer(start: LoopStart) -> LookaheadProposer:
        return LookaheadProposer(start.prompt_ids, window=window, ngram=ngram, guesses=guesses)

    return tree_draft_and_verify(model, prompt_ids, make_proposer, sampling=sampling, max_new_tokens=max_new_tokens,
                                 generators=generators, stop=stop, stream=stream, stats=stats)


__all__ = ["LookaheadProposer", "LookaheadWindow", "NgramPool", "lookahead"]
