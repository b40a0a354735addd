"""A toy `SequenceModel` with exact next-token probabilities, for distribution tests of decoders.

The next-token logits depend on the last two *visible* tokens and on the count of visible tokens
(the position), so a decoder that leaves a rejected draft visible in the cache, or miscounts
positions after a per-row rollback, changes the distribution and fails the test.
"""

from __future__ import annotations

import itertools

import torch

from ponder.kernels.sampling import SamplingParams, probs_from_logits


class ToyCache:
    """Per-row token history [B, L] with visibility flags; shared length, per-row holes via `hide`."""

    def __init__(self):
        self.tokens = torch.zeros((0, 0), dtype=torch.long)  # [B, L]
        self.visible = torch.zeros((0, 0), dtype=torch.bool)  # [B, L]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate length {length} outside [0, {self.length}]")
        self.tokens, self.visible = self.tokens[:, :length], self.visible[:, :length]

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens, self.visible = self.tokens[index], self.visible[index]

    def hide(self, hidden: torch.Tensor) -> None:
        assert hidden.shape == self.tokens.shape
        self.visible = self.visible & ~hidden

    def select_positions(self, start: int, index: torch.Tensor) -> None:
        """Row b's position start + index[b, j] moves to start + j (a verified tree's accepted path)."""
        source = start + index  # [B, N]
        self.tokens = torch.cat([self.tokens[:, :start], self.tokens.gather(1, source)], 1)
        self.visible = torch.cat([self.visible[:, :start], self.visible.gather(1, source)], 1)

    def context(self, row: int) -> list[int]:
        return self.tokens[row][self.visible[row]].tolist()


class NoHideCache(ToyCache):
    hide = None  # a cache without per-row rollback: decoders must go one row at a time
    select_positions = None


class HideOnlyCache(ToyCache):
    select_positions = None  # tree rollback must fall back to hiding the rejected nodes


class ToyChain:
    """Markov-ish chain over `vocab` tokens: logits = table[prev2, prev1] + position_bias[pos % 3]."""

    def __init__(self, vocab: int = 3, seed: int = 0, scale: float = 1.5, per_row_holes: bool = True,
                 eos: int | None = None, compact: bool = True):
        gen = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.table = torch.randn((vocab + 1, vocab + 1, vocab), generator=gen) * scale  # [V+1, V+1, V]
        self.position_bias = torch.randn((3, vocab), generator=gen) * scale  # [3, V]
        self.eos_token_ids = frozenset() if eos is None else frozenset({eos})
        self.context_length = 1024
        self.per_row_holes = per_row_holes
        self.compact = compact  # False: the cache has no select_positions (tree rollback hides instead)
        self.name = f"toy{seed}"

    def encode(self, prompt):
        return list(prompt)

    def decode(self, ids):
        return list(ids)

    def new_cache(self):
        if not self.per_row_holes:
            return NoHideCache()
        return ToyCache() if self.compact else HideOnlyCache()

    def next_logits(self, context: list[int]) -> torch.Tensor:
        prev1 = context[-1] if context else self.vocab
        prev2 = context[-2] if len(context) > 1 else self.vocab
        return self.table[prev2, prev1] + self.position_bias[len(context) % 3]  # [V]

    def prefill(self, prompt_ids, cache) -> torch.Tensor:
        assert cache.length == 0
        width = max(len(p) for p in prompt_ids)
        cache.tokens = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        cache.visible = torch.zeros((len(prompt_ids), width), dtype=torch.bool)
        for row, p in enumerate(prompt_ids):
            cache.tokens[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            cache.visible[row, width - len(p):] = True
        return torch.stack([self.next_logits(cache.context(r)) for r in range(len(prompt_ids))])  # [B, V]

    def forward(self, tokens: torch.Tensor, cache, attn_mask=None) -> torch.Tensor:
        """attn_mask: optional [B, T, T] bool (a token tree): new token i sees the new tokens j with
        mask[i, j] (itself included) after the whole visible cache; None is causal."""
        out = []
        for row in range(tokens.shape[0]):
            past = cache.context(row)
            new = tokens[row].tolist()
            row_logits = []
            for i in range(len(new)):
                seen = range(i + 1) if attn_mask is None else [j for j in range(i + 1) if attn_mask[row, i, j]]
                row_logits.append(self.next_logits(past + [new[j] for j in seen]))
            out.append(torch.stack(row_logits))
        cache.tokens = torch.cat([cache.tokens, tokens.cpu()], 1)
        cache.visible = torch.cat([cache.visible, torch.ones(tokens.shape, dtype=torch.bool)], 1)
        return torch.stack(out)  # [B, T, V]

    def exact_distribution(self, prompt: list[int], length: int, sampling: SamplingParams) -> dict:
        """P(first `length` new tokens = s) for every s in vocab^length, under `sampling`."""
        out = {}
        for seq in itertools.product(range(self.vocab), repeat=length):
            context, prob = list(prompt), 1.0
            for token in seq:
                prob *= float(probs_from_logits(self.next_logits(context)[None], sampling)[0, token])
                context.append(token)
            out[seq] = prob
        return out


def chi_square_pvalue(counts: dict, expected_probs: dict, total: int, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit; cells expected below `min_expected` are pooled into one."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0.0, 0.0, 0
    for key, prob in expected_probs.items():
        expected, observed = prob * total, counts.get(key, 0)
        if expected < min_expected:
            pooled_obs, pooled_exp = pooled_obs + observed, pooled_exp + expected
            continue
        stat += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    assert not set(counts) - set(expected_probs), "observed an outcome of probability zero"
    df = cells - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))

